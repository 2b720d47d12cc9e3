// SPDX-License-Identifier: GPL-2.0
/*
 * Runs the in-kernel filter (ipvtrace_filter.h, built with the same
 * -DIPVT_FILTER_EXPR as ipvtrace.c) on a test frame through
 * BPF_PROG_TEST_RUN: ipvtrace/capture/filter_check.py compares its verdicts with the
 * replay filter's on the same frames. `nomac[0]` = 1: the frame's L3 header
 * follows a 14-byte dummy (as a frame ipvlan got without a MAC header).
 */
#include "ipvtrace.h"
#include "ipvtrace_filter.h"

BPF_PERCPU_ARRAY(scratch, struct ipvt_event, 1);
BPF_ARRAY(nomac, __u32, 1);

int filter_check(struct __sk_buff *skb)
{
	int zero = 0;
	struct ipvt_event *e = scratch.lookup(&zero);
	__u32 *nm = nomac.lookup(&zero);
	if (!e || !nm)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	__u32 skip = *nm ? 14 : 0;
	__u64 len = skb->len;
	if (len <= skip)
		return 0;
	len -= skip;
	if (len > IPVT_HDR_MAX)
		len = IPVT_HDR_MAX;
	/* the verifier needs the bound on the register handed to the helper */
	asm volatile("" : "+r"(len));
	if (len < 1 || len > IPVT_HDR_MAX)
		return 0;
	if (bpf_skb_load_bytes(skb, skip, e->hdr, len) != 0)
		return 0;
	e->hdr_len = len;
	e->flags = IPVT_F_HAS_HDR | (skip ? IPVT_F_NO_MAC : 0);
	return pkt_match(e) ? 1 : 2;
}
