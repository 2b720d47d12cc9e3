/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one layout that BPF C and Python share. ipvtrace/model/layout.py parses the
 * enum and struct below (fixed-width members only, one per line), so a change
 * here is a change of the recording format: bump IPVT_FORMAT_VERSION.
 */
#ifndef IPVTRACE_H
#define IPVTRACE_H

/* 2: an event carries only the captured bytes of its frame (hdr_len), and
 * loss is flagged on the context it hit (IPVT_F_LOST); version-1 files read.
 * 3: an entry's context (ipvlan_queue_xmit, ipvlan_handle_frame) reaches user
 * space as one record (struct ipvt_rec) when it closes; version-2 files read */
#define IPVT_FORMAT_VERSION 3  /* new probe ids are additive: old files still read */
#define IPVT_HDR_MAX 128
#define IPVT_HITS_MAX 8          /* helper hits one context record holds */
#define IPVT_REC_MAX 1024        /* a record's room: ipvt_rec, frame, hits */
#define IPVT_IFNAMSIZ 16
#define IPVT_STACK_MAX 4
#define IPVT_FREE_SITES_MAX 1024 /* distinct skb free locations `record` names */

enum ipvt_probe {
	IPVT_P_XMIT = 1,         /* ipvlan_queue_xmit entry: a slave sends */
	IPVT_P_XMIT_RET = 2,     /* ipvlan_queue_xmit return */
	IPVT_P_RX = 3,           /* ipvlan_handle_frame entry: the parent receives */
	IPVT_P_RX_RET = 4,       /* ipvlan_handle_frame return (rx_handler verdict) */
	IPVT_P_RCV_FRAME = 5,    /* ipvlan_rcv_frame(.isra.N): to a slave */
	IPVT_P_LOOKUP_RET = 6,   /* ipvlan_addr_lookup return: owning slave or none */
	IPVT_P_FWD = 7,          /* dev_forward_skb entry */
	IPVT_P_FWD_RET = 8,      /* dev_forward_skb return */
	IPVT_P_QXMIT = 9,        /* __dev_queue_xmit on the parent */
	IPVT_P_LOCAL_OUT = 10,   /* ip_local_out: routed in the parent's netns */
	IPVT_P_LOCAL_OUT6 = 11,  /* ip6_local_out */
	IPVT_P_MC_ENQUEUE = 12,  /* ipvlan_multicast_enqueue */
	IPVT_P_MC_WORK = 13,     /* ipvlan_process_multicast entry (kworker) */
	IPVT_P_MC_WORK_RET = 14, /* ipvlan_process_multicast return */
	IPVT_P_NETIF_RX = 15,    /* netif_rx from the multicast worker */
	IPVT_P_KFREE = 16,       /* skb:kfree_skb tracepoint */
	IPVT_P_CONSUME = 17,     /* skb:consume_skb tracepoint */
	IPVT_P_L3_RCV = 18,      /* ipvlan_l3_rcv (L3S, l3mdev hook after the rx_handler) */
	IPVT_P_NF_INPUT = 19,    /* ipvlan_nf_input (L3S, LOCAL_IN) for a frame l3_rcv saw */
	IPVT_P_S2A_RET = 20,     /* ipvlan_skb_to_addr return: the L3S owner or none */
	IPVT_P_CONTEXT = 21,     /* not a probe: a closed context's record (struct ipvt_rec) */
	IPVT_P_S2A = 22,         /* ipvlan_skb_to_addr entry (runs counted, no event) */
	IPVT_P_MAX = 23,
};

/* Counters kept in the kernel (stats map index). */
enum ipvt_stat {
	IPVT_S_LOST_BASE = 0,    /* + probe id: ring buffer full */
	IPVT_S_STACK_OVERFLOW = 24,
	IPVT_S_STACK_MISMATCH = 25,
	IPVT_S_STACK_STALE = 26,
	IPVT_S_COUNTS_FULL = 27, /* stats mode: the counter map had no room */
	IPVT_S_HITS_FULL = 28,   /* a context saw more helper hits than its record holds */
	IPVT_S_SITES_FULL = 29,  /* free_sites had no room: a free location stays unnamed */
	IPVT_S_KEPT_OUT = 30,    /* contexts opened while the kernel would keep some of their
				    hits out: flagged incomplete (opened_kept_out) */
	IPVT_S_RUNS_BASE = 32,   /* + probe id: runs of that probe's program; the
				    kprobe's hits (tracefs kprobe_profile) minus
				    these are hits the kernel skipped the program for */
	IPVT_S_MAX = 56,
};

/* flags */
#define IPVT_F_LOCAL 0x01    /* rcv_frame local=true / mcast enqueue tx_pkt */
#define IPVT_F_WORKER 0x02   /* event seen in the multicast worker's context */
#define IPVT_F_HAS_DEV 0x04  /* ifindex/ifname/netns are filled */
#define IPVT_F_HAS_HDR 0x08  /* hdr[] holds the frame from its MAC header */
#define IPVT_F_NO_MAC 0x10   /* no MAC header: hdr[] starts at the L3 header */
#define IPVT_F_LOST 0x20     /* on a return (or worker return) event: an event of
				this context could not be reserved in the ring */
#define IPVT_F_ECHO 0x40     /* on an RX context: its frame is one a slave's TX
				handed to the parent (that packet's second half) */

/* Stats mode (ipvtrace stats): instead of events, the kernel gathers what a
 * context saw into one signature and counts signatures in a hash map; user
 * space names each distinct signature's branch with the same classifier. */
#define IPVT_H_DST_MCAST 0x01  /* the frame's destination MAC is multicast */
#define IPVT_H_NO_MAC 0x02     /* no MAC header */
#define IPVT_H_RUNT 0x04       /* shorter than an Ethernet header */
#define IPVT_H_FOUND 0x08      /* ipvlan_addr_lookup / skb_to_addr found a slave */
#define IPVT_H_OWN_QX 0x10     /* __dev_queue_xmit of the entry's own skb */
#define IPVT_H_CONSUME_OWN 0x20 /* consume_skb of the entry's own skb */
#define IPVT_H_KFREE_ENQ 0x40  /* kfree_skb of the skb given to the multicast queue */
#define IPVT_H_ECHO 0x80       /* RX of a frame a slave's TX forwarded to the parent */

/* ipvlan_rcv_frame's GCC clone was handed another skb, or another slave than
 * ipvlan_addr_lookup found: its hit is not evidence (the packet is incomplete) */
#define IPVT_C_CLONE_ARGS 0x01
/* the context's record could not keep all its helpers' hits (see
 * IPVT_S_HITS_FULL): counted, but the packet is incomplete */
#define IPVT_C_LOST 0x02

struct ipvt_sig {
	__u32 seen;
	__u32 netns;
	__s32 ifindex;
	__u32 to_netns;
	__s32 to_ifindex;
	__u32 own_netns;
	__s32 own_ifindex;
	__s32 ret;
	__s32 fwd_ret;
	__u32 reason;
	__u16 etype;
	__u8 kind;
	__u8 hflags;
	__u8 l4;
	__u8 checks;   /* IPVT_C_*: checks on the evidence that failed */
	__u16 pad2;
};
_Static_assert(sizeof(struct ipvt_sig) % 8 == 0, "ipvt_sig is compared in 8-byte words");

struct ipvt_event {
	__u64 ts;
	__u64 skb;
	__u64 head;
	__u64 ctx;
	__u64 aux;
	__u64 aux2;
	__s64 ret;
	__u32 cpu;
	__u32 pid;
	__u32 netns;
	__s32 ifindex;
	__u32 reason;
	__u32 len;
	__u16 probe;
	__u8 depth;
	__u8 flags;
	__u16 hdr_len;
	__u16 pad;
	char ifname[16];
	__u8 hdr[128];
};

/*
 * One closed context (ipvlan_queue_xmit or ipvlan_handle_frame): its entry as
 * an ipvt_event would report it (same offsets; `probe` is IPVT_P_CONTEXT and
 * `kind` the entry's probe), its return, then hdr_len frame bytes zero-padded
 * to 8, then nhits struct ipvt_hit: what the helpers saw while it was the
 * innermost context. IPVT_F_LOST in flags: it could not keep all of them.
 */
struct ipvt_rec {
	__u64 ts;
	__u64 skb;
	__u64 head;
	__u64 ctx;
	__u32 nhits;
	__u32 kind;
	__u32 ret_dt;
	__u32 pad0;
	__s64 ret;
	__u32 cpu;
	__u32 pid;
	__u32 netns;
	__s32 ifindex;
	__u32 pad1;
	__u32 len;
	__u16 probe;
	__u8 depth;
	__u8 flags;
	__u16 hdr_len;
	__u16 pad;
	char ifname[16];
};

/* A helper probe's hit inside a context: an ipvt_event without its frame,
 * its time as an offset from the context's entry. */
struct ipvt_hit {
	__u64 skb;
	__u64 head;
	__u64 aux;
	__u64 aux2;
	__s64 ret;
	__u32 dt;
	__u32 netns;
	__s32 ifindex;
	__u32 reason;
	__u32 len;
	__u16 probe;
	__u8 flags;
	__u8 pad;
	char ifname[16];
};

#endif
