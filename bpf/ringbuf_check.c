// SPDX-License-Identifier: GPL-2.0
/*
 * A self-test of ipvtrace/capture/ringbuf.py (the mapped ring buffer reader) on the
 * machine's own kernel: a socket filter on lo sends one record per packet,
 * of two sizes, into a ring small enough to wrap many times.
 */
struct bpf_wq { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_refcount { __u32 __opaque[1]; } __attribute__((aligned(4)));
struct bpf_rb_root { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_rb_node { __u64 __opaque[4]; } __attribute__((aligned(8)));
#include <linux/skbuff.h>

BPF_RINGBUF_OUTPUT(events, 4);
BPF_ARRAY(sent, __u64, 1);

int on_packet(struct __sk_buff *skb)
{
	struct rec { __u64 seq; __u32 len; __u32 magic; __u64 pad; } r = {};
	int zero = 0;
	__u64 *n = sent.lookup(&zero);
	if (!n)
		return 0;
	r.seq = __sync_fetch_and_add(n, 1);
	r.len = skb->len;
	r.magic = 0x1b7ace;
	if (r.seq & 1)
		events.ringbuf_output(&r, 24, 0);
	else
		events.ringbuf_output(&r, 16, 0);
	return 0;
}
