/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The in-kernel half of the tcpdump-style filter: what IPVT_FILTER_EXPR (a C
 * expression made by ipvtrace/model/filterexpr.py) can test, read from a captured
 * frame. Shared by bpf/ipvtrace.c and bpf/filter_check.c, which runs it on
 * test frames next to the replay filter (both must select the same packets).
 * It reads what ipvtrace/model/packet.py reads: Ethernet or a bare L3 header,
 * ARP sender/target, IPv4 (options skipped for ports, none in a fragment
 * after the first), IPv6 with one
 * hop-by-hop header (MLD reports carry one).
 */
#ifndef IPVTRACE_FILTER_H
#define IPVTRACE_FILTER_H

struct ipvt_pkt {
	__u32 s4, d4;
	__u32 s6[4], d6[4];
	__u16 etype, sport, dport;
	__u8 l4, has4, has6;
};

/* bytes h[o..o+1] as a big-endian u16, o bounded for the verifier */
static __always_inline __u16 be16_at(__u8 *h, __u32 o)
{
	asm volatile("%[o] &= 0x7f" : [o] "+r"(o));
	if (o > IPVT_HDR_MAX - 2)
		return 0;
	return ((__u16)h[o] << 8) | h[o + 1];
}

/* The L3 header at `base` (0: no MAC header, 14: after Ethernet). */
static __always_inline void pkt_l3(struct ipvt_pkt *p, __u8 *h, __u32 n, const __u32 base)
{
	if (p->etype == 0x0806 && n >= base + 28) {
		__builtin_memcpy(&p->s4, h + base + 14, 4);     /* ARP sender IP */
		__builtin_memcpy(&p->d4, h + base + 24, 4);     /* ARP target IP */
		p->has4 = 1;
	} else if (p->etype == 0x0800 && n >= base + 20) {
		p->l4 = h[base + 9];
		__builtin_memcpy(&p->s4, h + base + 12, 4);
		__builtin_memcpy(&p->d4, h + base + 16, 4);
		p->has4 = 1;
		__u32 off = base + ((h[base] & 0x0f) << 2);
		/* a fragment after the first has no L4 header: no ports (as tcpdump) */
		if ((be16_at(h, base + 6) & 0x1fff) == 0 && off + 4 <= n) {
			p->sport = be16_at(h, off);
			p->dport = be16_at(h, off + 2);
		}
	} else if (p->etype == 0x86dd && n >= base + 40) {
		__u32 off = base + 40;
		p->l4 = h[base + 6];
		__builtin_memcpy(p->s6, h + base + 8, 16);
		__builtin_memcpy(p->d6, h + base + 24, 16);
		p->has6 = 1;
		if (p->l4 == 0) {   /* hop-by-hop options: the next header is behind them */
			if (off + 8 > n)
				return;
			__u32 o = off;
			asm volatile("%[o] &= 0x7f" : [o] "+r"(o));
			if (o > IPVT_HDR_MAX - 2)
				return;
			p->l4 = h[o];
			off += ((__u32)h[o + 1] + 1) * 8;
		}
		if (off + 4 <= n) {
			p->sport = be16_at(h, off);
			p->dport = be16_at(h, off + 2);
		}
	}
}

static __always_inline int pkt_match(struct ipvt_event *e)
{
	struct ipvt_pkt p = {};
	__u8 *h = e->hdr;
	__u32 n = e->hdr_len;

	if (!(e->flags & IPVT_F_HAS_HDR) || n > IPVT_HDR_MAX)
		return 1;   /* nothing to judge by: keep it */
	if (e->flags & IPVT_F_NO_MAC) {
		if (n < 1)
			return 1;
		p.etype = (h[0] >> 4) == 4 ? 0x0800 : (h[0] >> 4) == 6 ? 0x86dd : 0;
		pkt_l3(&p, h, n, 0);
	} else {
		if (n < 14)
			return 1;
		p.etype = ((__u16)h[12] << 8) | h[13];
		pkt_l3(&p, h, n, 14);
	}
	return IPVT_FILTER_EXPR;
}

#endif
