"""Text output (rows, the stats tables) carries no character that does not
print. An interface name may hold an ESC (the kernel's dev_valid_name
refuses only '/', ':' and spaces), and a recording made elsewhere may hold
anything: on a terminal such a name must not clear the screen, set the
window title or break a row's line."""
import io
import re

from rich.console import Console

from ipvtrace.output import render

# rich's own styles, the only escapes a line may carry
SGR = re.compile(r"\x1b\[[0-9;]*m")


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=300, highlight=False, soft_wrap=True), out


def test_names_that_do_not_print_are_replaced_one_for_one_in_a_row():
    console, out = terminal()
    row = {"time": 1.5, "from": {"dev": "e\x1b[2Jth0", "netns": "ns\n1"}, "to": None,
           "summary": "ICMP 10.0.0.1 > 10.0.0.2 echo-request seq 1", "branch": "tx.l2.local",
           "delivery": "delivered", "complete": True, "why": "owner\x1b]0;title\x07 found",
           "mcast": [{"to": {"dev": "a\x1bb", "netns": "n"}, "by": "dev_forward_skb",
                      "branch": "mcast.deliver", "delivery": "delivered"}]}
    render.LineSink(console, why=True)(row)
    text = SGR.sub("", out.getvalue())
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    lines = text.splitlines()
    assert len(lines) == 4, lines   # the header, the row, its delivery, its why
    assert lines[1].split()[1] == "e\ufffd[2Jth0@ns\ufffd1", lines[1]
    assert "a\ufffdb@n" in lines[2] and "owner\ufffd]0;title\ufffd found" in lines[3]


def test_the_stats_tables_print_names_from_a_file_printable():
    console, out = terminal()
    render.print_stats({"packets": 1, "branches": {"tx.l2.local": 1},
                        "drops": {"tx.l2.private_drop: r\x1b[2J": 1},
                        "kernel_stats": {"skipped.x\x1b[2J": 2}}, console)
    text = SGR.sub("", out.getvalue())
    assert "\x1b" not in text, repr(text)
    assert "r\ufffd[2J" in text and "x\ufffd[2J 2" in text


def test_printable_keeps_what_prints_and_the_length():
    for s in ("eth0@ipvt-node1ns", "└ by dev_forward_skb", "naïve…", "\x1b[2J\n\t\u2028"):
        p = render.printable(s)
        assert len(p) == len(s) and p.isprintable()
        assert (p == s) == s.isprintable()


def test_the_dashboard_draws_names_printable():
    console, out = terminal()
    board = render.Dashboard(console=console)
    board({"time": 1.5, "from": {"dev": "e\x1b[2Jth0", "netns": "n"}, "to": None,
           "summary": "ICMP", "branch": "tx.l2.local", "delivery": "delivered", "complete": True})
    console.print(board)
    text = SGR.sub("", out.getvalue())
    assert "\x1b" not in text and "e\ufffd[2Jth0@n" in text, repr(text)
