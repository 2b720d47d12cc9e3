/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel structs bpf/ipvtrace.c reads, by offset.
 *
 * Normally the offsets come from the running kernel's BTF as -DIPVT_OFF_*
 * (ipvtrace/capture/btf.py): then no header that defines struct sk_buff or
 * struct net_device is parsed, and that parsing was nearly all of bcc's
 * compile. A kernel without BTF gets them from its headers (offsetof), as
 * before. IPVT_CHECK_OFFSETS compiles both and fails unless they agree (the
 * compile check and the guest suite run it).
 */
#ifndef IPVTRACE_KERNEL_H
#define IPVTRACE_KERNEL_H

#if !defined(IPVT_OFF_SKB_HEAD) || defined(IPVT_CHECK_OFFSETS)
/* bcc 0.26's compat uapi bpf.h predates these, and 6.4+ kernel headers use
 * them from include/linux/bpf.h: declare them as the kernel's uapi does. */
struct bpf_wq { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_refcount { __u32 __opaque[1]; } __attribute__((aligned(4)));
struct bpf_rb_root { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_rb_node { __u64 __opaque[4]; } __attribute__((aligned(8)));

#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <net/net_namespace.h>
#include <net/dst.h>
#else
#include <uapi/linux/ptrace.h>
struct sk_buff;
struct net_device;
struct net;
struct dst_entry;
#endif

#ifndef IPVT_OFF_SKB_HEAD
#define IPVT_OFF_SKB_HEAD offsetof(struct sk_buff, head)
#define IPVT_OFF_SKB_DATA offsetof(struct sk_buff, data)
#define IPVT_OFF_SKB_MAC_HEADER offsetof(struct sk_buff, mac_header)
#define IPVT_OFF_SKB_LEN offsetof(struct sk_buff, len)
#define IPVT_OFF_SKB_DATA_LEN offsetof(struct sk_buff, data_len)
#define IPVT_OFF_SKB_DEV offsetof(struct sk_buff, dev)
#define IPVT_OFF_SKB_REFDST offsetof(struct sk_buff, _skb_refdst)
#define IPVT_OFF_DEV_IFINDEX offsetof(struct net_device, ifindex)
#define IPVT_OFF_DEV_NAME offsetof(struct net_device, name)
#define IPVT_OFF_DEV_NET offsetof(struct net_device, nd_net.net)
#define IPVT_OFF_NET_INUM offsetof(struct net, ns.inum)
#define IPVT_OFF_DST_DEV offsetof(struct dst_entry, dev)
#endif

#ifdef IPVT_CHECK_OFFSETS
#define IPVT_SAME(off, type, member) \
	_Static_assert((off) == offsetof(type, member), #type "." #member " differs from BTF")
IPVT_SAME(IPVT_OFF_SKB_HEAD, struct sk_buff, head);
IPVT_SAME(IPVT_OFF_SKB_DATA, struct sk_buff, data);
IPVT_SAME(IPVT_OFF_SKB_MAC_HEADER, struct sk_buff, mac_header);
IPVT_SAME(IPVT_OFF_SKB_LEN, struct sk_buff, len);
IPVT_SAME(IPVT_OFF_SKB_DATA_LEN, struct sk_buff, data_len);
IPVT_SAME(IPVT_OFF_SKB_DEV, struct sk_buff, dev);
IPVT_SAME(IPVT_OFF_SKB_REFDST, struct sk_buff, _skb_refdst);
IPVT_SAME(IPVT_OFF_DEV_IFINDEX, struct net_device, ifindex);
IPVT_SAME(IPVT_OFF_DEV_NAME, struct net_device, name);
IPVT_SAME(IPVT_OFF_DEV_NET, struct net_device, nd_net.net);
IPVT_SAME(IPVT_OFF_NET_INUM, struct net, ns.inum);
IPVT_SAME(IPVT_OFF_DST_DEV, struct dst_entry, dev);
#endif

/* Read the member at byte offset OFF of the kernel object at BASE into DST. */
#define KREAD(dst, base, off) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), (const void *)((const char *)(base) + (off)))

#endif
