// SPDX-License-Identifier: GPL-2.0
/*
 * ipvtrace: which branch did the ipvlan driver take, packet by packet.
 *
 * Entry probes (ipvlan_queue_xmit, ipvlan_handle_frame) open a *context* on a
 * per-CPU stack; helper probes (dev_forward_skb, __dev_queue_xmit, ...) are
 * only reported while a context is open, as *hits* kept in that context's
 * record in its stack entry (the innermost context: a softirq running
 * another packet's RX inside a TX on the same CPU never mixes the two). The
 * record (struct ipvt_rec: the entry, its frame, its hits, its return) goes
 * to the ring buffer once, when the context closes. The multicast worker is
 * a kworker that may sleep and migrate: its context is keyed by task, not by
 * CPU, and it reports events (struct ipvt_event) as they happen, as do the
 * L3S hooks; they carry the join keys (skb, skb->head) that tie them to the
 * records.
 *
 * Options come as -D cflags from ipvtrace/capture/probes.py (the probe plan):
 *   IPVT_HAVE_CONSUME_LOCATION  skb:consume_skb has a location field (6.3+)
 *   IPVT_HAVE_DROP_REASON       skb:kfree_skb has a reason field (5.17+)
 *   IPVT_TP_FREES,              the skb frees are classic tracepoints (not
 *   IPVT_TP_<EVENT>_<FIELD>     raw), and where their records hold skbaddr,
 *                               location and reason (PREEMPT_RT 6.13+)
 *   IPVT_RINGBUF_PAGES          ring buffer size in pages
 *   IPVT_FILTER_EXPR            a C expression over `struct ipvt_pkt p`, made
 *                               by ipvtrace/model/filterexpr.py from a tcpdump-style
 *                               filter: packets it rejects send no event
 *   IPVT_STACK_PER_TASK         PREEMPT_RT: a task can be preempted inside a
 *                               probed function and another task then runs on
 *                               that CPU, so contexts are kept per task (and
 *                               CPU) instead of per CPU
 *   IPVT_OFF_*                  struct offsets from the kernel's BTF
 *                               (ipvtrace/capture/btf.py); without them the
 *                               kernel headers give them (bpf/ipvtrace_kernel.h)
 *   IPVT_CHECK_OFFSETS          compile against the headers too, and fail
 *                               unless every IPVT_OFF_* equals their offsetof
 *   IPVT_PERCPU_OFFSETS,        the address of __per_cpu_offset[] and the
 *   IPVT_PREEMPT_COUNT          per-CPU offset of preempt_count (kallsyms,
 *                               BTF): a hit in a softirq the multicast
 *                               worker's task serves is not the worker's
 *   IPVT_RT_SOFTIRQ_CNT_OFF     PREEMPT_RT: task_struct.softirq_disable_cnt,
 *                               where RT keeps "serving a softirq"
 *   IPVT_WATCH_ACTIVE,          a context opened inside another program's
 *   IPVT_BPF_PROG_ACTIVE,       run is flagged (opened_kept_out): how many
 *   IPVT_KEEPOUT_INTERRUPTED_ONLY programs' marks to read, bpf_prog_active's
 *                               address, and read them only in an interrupt
 *                               (no program of the plan can be preempted)
 *   IPVT_COUNT_RUNS             before 6.7: each program counts its runs (ran)
 *   IPVT_COUNT_ONLY             `ipvtrace stats`: no events at all; each
 *                               context's record is gathered as in the trace
 *                               build, read into a signature (struct
 *                               ipvt_sig) when it closes and counted in
 *                               `slots`: the builds differ only there (see
 *                               "where the two builds differ")
 */

#include "ipvtrace_kernel.h"
#include "ipvtrace.h"

#ifndef IPVT_RINGBUF_PAGES
#define IPVT_RINGBUF_PAGES 1024
#endif
/* What the build's sink (see "where the two builds differ") reads of the
 * evidence everything else gathers alike: `stats` names devices by netns and
 * ifindex, reads 24 bytes of the frame (sig_frame) and no hit's time, so its
 * records skip the device names, the rest of the frame and the hits' clock
 * reads (measured under QEMU on 6.12, program time a pod-to-pod packet: the
 * count build's own evidence 10.5 us, the folded build with them 17.8, without
 * them 12.5). */
#ifdef IPVT_COUNT_ONLY
#define IPVT_SINK_HDR 24
#define IPVT_SINK_NAMES 0
#define IPVT_SINK_HIT_TIMES 0
#else
#define IPVT_SINK_HDR IPVT_HDR_MAX
#define IPVT_SINK_NAMES 1
#define IPVT_SINK_HIT_TIMES 1
#endif
/* in a `workers` value: an event of this worker run was not reserved */
#define IPVT_WORKER_LOSSY (1ULL << 63)
/* Per CPU, a context older than this is left over from a missed return
 * probe. Not per task (PREEMPT_RT): a task preempted inside ipvlan can wait
 * longer than any bound (seen: a route-fail TX whose context was dropped as
 * stale, in both tracers, with no probe missed); there the stack pointer
 * tells, see ctx_push. */
#define IPVT_STALE_NS 200000000ULL

/* clang drops a mask it can prove redundant; the verifier still needs it. */
static __always_inline __u32 stack_idx(__u32 v)
{
	asm volatile("%[v] &= 3" : [v] "+r"(v));
	return v;
}

struct ipvt_stack {
	__u32 depth;
	__u32 pad;
	__u64 id[IPVT_STACK_MAX];
	__u64 ts[IPVT_STACK_MAX];
	__u16 kind[IPVT_STACK_MAX];
	__u8 filtered[IPVT_STACK_MAX];
	__u8 lossy[IPVT_STACK_MAX];   /* an event of this context was not reserved */
	/* the entry's device: net_dev_xmit closes the xmit context its skb
	 * and device opened (on_xmit_done), not the parent's xmit inside it */
	__u64 dev[IPVT_STACK_MAX];
#ifdef IPVT_STACK_PER_TASK
	__u64 sp[IPVT_STACK_MAX];     /* the task's stack pointer at the entry probe */
#endif
	/* what `stats` joins across contexts before this one closes
	 * (count_hit_kept): the skb it gave the multicast queue */
	__u64 enq_skb[IPVT_STACK_MAX];
	/* each open context's record: struct ipvt_rec, frame, hits (rec_open) */
	__u8 rec[IPVT_STACK_MAX][IPVT_REC_MAX];
};

BPF_RINGBUF_OUTPUT(events, IPVT_RINGBUF_PAGES);

/* Whether a submit wakes the consumer. By default the ring wakes it for the
 * first record after each time it caught up: with a consumer that keeps up,
 * that is every few records (1,200 wake-ups a second in a `record` of the
 * 6.12 guest's flood, 12 records each), each an irq_work on the sending CPU
 * and a task wake-up. The consumer polls at least every 200 ms anyway
 * (live.TICK_MS), so a record wakes it only every IPVT_WAKE_EVERY records:
 * by then at most a quarter of the ring is waiting, three quarters are left.
 * (bpf_ringbuf_query would say how full the ring is, but bcc 0.26 has no
 * way to name the map to it.) The count is shared by all CPUs: an add
 * without fetch (5.10 has no fetch) and a read after it, so two CPUs may
 * see one value and one multiple be skipped; the next one, or the poll,
 * wakes the consumer. */
#define IPVT_WAKE_EVERY ((__u64)IPVT_RINGBUF_PAGES * PAGE_SIZE / 4 / IPVT_REC_MAX)
BPF_ARRAY(ring_sent, __u64, 1);

static __always_inline __u64 ring_wake(void)
{
	int zero = 0;
	__u64 *n;
	if (IPVT_WAKE_EVERY < 2)   /* a tiny ring: as the kernel decides */
		return 0;
	n = ring_sent.lookup(&zero);
	if (!n)
		return 0;
	__sync_fetch_and_add(n, 1);
	return *n % IPVT_WAKE_EVERY ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;
}
#ifdef IPVT_STACK_PER_TASK
/* tid << 32 | cpu: on PREEMPT_RT softirqs run in threads and a task can be
 * preempted (not migrated) inside ipvlan, so nesting is per task */
BPF_TABLE("lru_hash", __u64, struct ipvt_stack, stacks, 2048);
BPF_PERCPU_ARRAY(stack_zero, struct ipvt_stack, 1);  /* never written: an empty stack */
BPF_TABLE("lru_hash", __u64, __u64, s2a_ctx, 4096);   /* ctx of the running skb_to_addr */
#else
BPF_PERCPU_ARRAY(stack, struct ipvt_stack, 1);
BPF_PERCPU_ARRAY(s2a_ctx, __u64, 1);          /* ctx of the running skb_to_addr */
#endif
/* [0] = 1 once user space has attached every probe: a packet already inside
 * ipvlan while the probes were being attached has holes in its evidence, so
 * no context opens before that (no row from partial evidence) */
BPF_ARRAY(armed, __u32, 1);
BPF_PERCPU_ARRAY(seq, __u64, 1);
/* Events outside any record (ev_init) and the worker's hits (hit_begin) are
 * built in per-CPU scratch, one slot per program that may be stopped
 * half-way while another program runs on the CPU: a raw tracepoint's or
 * trampoline's program is entered with the kprobes' bpf_prog_active free,
 * so a kprobe's program in an interrupt's softirq may run inside it, and on
 * PREEMPT_RT from 6.13 (probes.RAW_TP_PREEMPTIBLE_RT_SINCE) another task's
 * program may run while it is preempted. Each program has its own slot
 * (its probe id); the kernel never runs a program twice at once on a CPU
 * except a pre-6.7 raw tracepoint's inside a softirq, and a worker's hit
 * is not made there (hit_begin). The kprobes' programs keep each other out
 * (bpf_prog_active) and cannot be preempted: their hits share slot 0, where
 * the on_worker_hit they tail-call finds them. */
#define IPVT_KPROBE_SLOT 0
BPF_PERCPU_ARRAY(scratch, struct ipvt_event, IPVT_P_MAX);
/* Counters user space reads through mapped pages, never with a syscall: a
 * map syscall holds this CPU's bpf_prog_active while it copies, and every
 * kprobe and tracepoint program that fires on that CPU meanwhile (a softirq
 * on its way out of an interrupt; on PREEMPT_RT, any task that preempts the
 * reader) is skipped by the kernel without a trace: evidence lost unseen. */
BPF_F_TABLE("array", int, __u64, stats, IPVT_S_MAX, BPF_F_MMAPABLE);
BPF_HASH(workers, __u32, __u64, 1024);      /* tid -> worker context id */
/* how many entries `workers` holds: a hit outside any context looks the
 * task up there only while a run is in it (no hash lookup for every other
 * packet of the node on qxmit and the frees) */
BPF_ARRAY(workers_in, __s64, 1);
BPF_HASH(fwd_ctx, __u64, __u64, 1024);      /* tid<<32|cpu -> worker run, for its fwd return */
/* L3S: a frame the l3mdev hook saw, until LOCAL_IN; LRU so frames that never
 * reach LOCAL_IN (forwarded, dropped) age out. value: ctx id | phase << 62 */
BPF_TABLE("lru_hash", __u64, __u64, l3s_skbs, 4096);
/* data (skb->head) of frames the filter rejected that leave their context for
 * more ipvlan code (queued for the multicast worker, passed by an RX context
 * to the L3S hooks): their worker and L3S events are not reported either.
 * Only those: an insert into an LRU map for every rejected packet cost more
 * than the filter itself (1.5-2.5 us a packet under emulation, 2026-12-03). */
BPF_TABLE("lru_hash", __u64, __u8, filtered_heads, 4096);
/* skb -> skb->head of frames a slave's TX handed to the parent
 * (tx.l2.to_parent): their RX on the parent is the same packet, not another
 * one. Kept at the dev_forward_skb hit, not when the TX context closes: the
 * RX can close first where another task runs the softirq while the sender
 * is preempted inside ipvlan_queue_xmit (PREEMPT_RT 7.2, which no longer
 * serialises BH-disabled sections: Debian's builds it without
 * CONFIG_PREEMPT_RT_NEEDS_BH_LOCK; seen), or on another CPU (RPS). */
BPF_TABLE("lru_hash", __u64, __u64, echo_skbs, 4096);
#ifdef IPVT_COUNT_ONLY
/* Counted signatures, read by user space through mapped pages (never with a
 * map syscall: see `stats`). Each CPU fills its own range of `slots`
 * (IPVT_SLOTS_PER_CPU from cpu * IPVT_SLOTS_PER_CPU) and publishes how many
 * it used in `slot_next[cpu]` after writing the signature; `slot_of` is
 * where this CPU counts a signature (slot + 1, 0: none yet). Only its own
 * CPU writes a range, but on PREEMPT_RT two tasks' programs can interleave on
 * one CPU: a slot is taken and counted with atomic adds, and a signature two
 * tasks both found new gets two slots, which user space sums with the rest
 * of that signature's slots over the CPUs. */
#ifndef IPVT_NR_CPUS
#define IPVT_NR_CPUS 64
#endif
#define IPVT_SLOTS_PER_CPU 512
struct ipvt_slot {
	struct ipvt_sig sig;
	__u64 count;
};
BPF_F_TABLE("array", int, struct ipvt_slot, slots, IPVT_NR_CPUS * IPVT_SLOTS_PER_CPU,
	    BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, __u64, slot_next, IPVT_NR_CPUS, BPF_F_MMAPABLE);
BPF_PERCPU_HASH(slot_of, struct ipvt_sig, __u32, 8192);
/* The last signature this CPU counted and its slot (+ 1): a flood is one
 * signature again and again, and six compares cost less than hashing the
 * signature for slot_of (not on PREEMPT_RT, where a task that preempts
 * another's program could rewrite it between the compare and the use). */
struct ipvt_sig_last {
	struct ipvt_sig sig;
	__u32 slot1;
	__u32 pad;
};
BPF_PERCPU_ARRAY(sig_last, struct ipvt_sig_last, 1);
/* L3S frames between ipvlan_l3_rcv and LOCAL_IN, by their L3S id (l3s_skbs):
 * the parent, then the owner */
struct ipvt_l3s {
	__u32 netns;
	__s32 ifindex;
	__u32 own_netns;
	__s32 own_ifindex;
};
BPF_TABLE("lru_hash", __u64, struct ipvt_l3s, l3s_count, 4096);
/* data (skb->head) of frames given to the multicast queue -> the worker run
 * that claimed it (0: not yet), the queued skb and its origin. The worker's
 * deliveries are clones (same head); anything else its task does (a softirq
 * it runs, a slave's reply) is not a delivery, and may free or send an skb
 * of a queued head (an RX frame's original, queued as a clone; data freed
 * and reused at once): a free claims only the queued skb, a send counts only
 * for a frame a slave queued. One run handles a queued frame: a head claimed
 * by an older run was freed and reused, and is not counted (as the
 * correlator, which matches a head only while its packet waits for the
 * worker). A head queued
 * again while claimed (its memory reused, or a frame the parent's peer
 * reflected while the claiming run still sends it: the reflection shares the
 * data) is marked MC_PENDING: the next run to touch it takes it over. */
#define MC_PENDING (1ULL << 63)
/* The claiming run sent the frame out of the parent, its last step in
 * ipvlan_process_multicast: counted once, and nothing of this head after it
 * in the run is a delivery (a VLAN or bond parent queues the same skb again
 * on its lower device; the parent's peer may reflect it; the memory may be
 * freed and reused by a reply sent and received within the send, seen on
 * 5.10). */
#define MC_SENT (1ULL << 62)
struct mc_head {
	__u64 claim;   /* the claiming run, MC_PENDING, MC_SENT */
	__u64 skb;     /* the skb last queued with this head */
	__u64 tx;      /* queued by a slave's TX (sent out of the parent at the end) */
};
BPF_TABLE("lru_hash", __u64, struct mc_head, mc_heads, 4096);

/* May this worker run count (and claim) the queued frame behind *claim? */
static __always_inline int mc_claim(__u64 *claim, __u64 run_id)
{
	__u64 owner = *claim & ~(MC_PENDING | MC_SENT);
	if (owner == run_id)
		return 1;
	if (owner == 0 || (*claim & MC_PENDING)) {
		*claim = run_id;
		return 1;
	}
	return 0;   /* queued for an earlier run: this head was reused */
}
#endif

static __always_inline __u64 task_cpu_key(void)
{
	return (bpf_get_current_pid_tgid() << 32) | bpf_get_smp_processor_id();
}

/* This CPU's (PREEMPT_RT: this task's) context stack. */
static __always_inline struct ipvt_stack *stack_get(int create)
{
#ifdef IPVT_STACK_PER_TASK
	__u64 key = task_cpu_key();
	struct ipvt_stack *st = stacks.lookup(&key);
	if (st || !create)
		return st;
	int zero = 0;
	struct ipvt_stack *empty = stack_zero.lookup(&zero);
	if (!empty)
		return 0;
	stacks.update(&key, empty);
	return stacks.lookup(&key);
#else
	int zero = 0;
	return stack.lookup(&zero);
#endif
}

static __always_inline __u64 *s2a_slot(int create)
{
#ifdef IPVT_STACK_PER_TASK
	__u64 key = task_cpu_key();
	__u64 *slot = s2a_ctx.lookup(&key);
	if (slot || !create)
		return slot;
	__u64 zero64 = 0;
	s2a_ctx.update(&key, &zero64);
	return s2a_ctx.lookup(&key);
#else
	int zero = 0;
	return s2a_ctx.lookup(&zero);
#endif
}

static __always_inline int is_armed(void)
{
	int zero = 0;
	__u32 *a = armed.lookup(&zero);
	return a && *a;
}

static __always_inline void stat_inc(int idx)
{
	__u64 *v = stats.lookup(&idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Before 6.7 (IPVT_COUNT_RUNS) every kprobe's program counts its runs first thing:
 * the kernel skips a kprobe's program while another holds this CPU's
 * bpf_prog_active (a softirq that came in while a program ran, on its way
 * out of an interrupt), and only the kprobe's hit count (tracefs
 * kprobe_profile) sees those hits; user space takes one from the other.
 * From 6.7 the kernel counts each program's skips itself (recursion_misses,
 * as it does for fentry/fexit from 5.12), and the count, an atomic add on a
 * line every CPU writes, is not paid on every hit (qxmit and the frees fire
 * for every packet of the node). */
static __always_inline void ran(int probe)
{
#ifdef IPVT_COUNT_RUNS
	stat_inc(IPVT_S_RUNS_BASE + probe);
#endif
}

/* Only a kprobe's runs are read (loader.skipped: its hits in
 * kprobe_profile minus its runs); the kernel counts a trampoline's skips
 * itself and a raw tracepoint's are not known, so their programs count no
 * runs. The helpers shared by a kprobe and an fentry/fexit program pass
 * their `tail`, 1 in the kprobe's (a constant once inlined). */
static __always_inline void kprobe_ran(int probe, int kprobe)
{
	if (kprobe)
		ran(probe);
}

static __always_inline __u64 new_ctx_id(void)
{
	int zero = 0;
	__u64 *s = seq.lookup(&zero);
	__u64 n = 0;
	if (s) {
		(*s)++;
		n = *s;
	}
	return ((__u64)bpf_get_smp_processor_id() << 48) | (n & 0xffffffffffffULL);
}

/* An event's fixed part, zeroed and stamped (its frame bytes untouched). */
static __always_inline void ev_fill(struct ipvt_event *e, __u16 probe, __u64 ctx_id, __u8 depth)
{
	__builtin_memset(e, 0, sizeof(*e) - IPVT_HDR_MAX);
	e->ts = bpf_ktime_get_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->pid = bpf_get_current_pid_tgid();
	e->probe = probe;
	e->ctx = ctx_id;
	e->depth = depth;
}

/* An event outside any record (the worker's, the L3S path's), in scratch. */
static __always_inline struct ipvt_event *ev_init(__u16 probe, __u64 ctx_id, __u8 depth)
{
	int slot = probe;
	struct ipvt_event *e = scratch.lookup(&slot);
	if (!e)
		return 0;
	ev_fill(e, probe, ctx_id, depth);
	return e;
}

/* A device's fields, into an event or a hit (struct ipvt_event and struct
 * ipvt_hit name them alike): the one copy of this code for both. */
#define FILL_DEV(x, dev)							\
	do {									\
		struct net_device *dev_ = (dev);				\
		struct net *net_ = 0;						\
		if (!dev_)							\
			break;							\
		KREAD((x)->ifindex, dev_, IPVT_OFF_DEV_IFINDEX);		\
		if (IPVT_SINK_NAMES)						\
			bpf_probe_read_kernel_str((x)->ifname, sizeof((x)->ifname), \
					  (const char *)dev_ + IPVT_OFF_DEV_NAME); \
		KREAD(net_, dev_, IPVT_OFF_DEV_NET);				\
		if (net_)							\
			KREAD((x)->netns, net_, IPVT_OFF_NET_INUM);		\
		(x)->flags |= IPVT_F_HAS_DEV;					\
	} while (0)

/* The skb a helper saw: its address, head and length (no bytes). */
#define FILL_SKB(x, skb)							\
	do {									\
		struct sk_buff *skb_ = (skb);					\
		(x)->skb = (__u64)skb_;						\
		if (!skb_)							\
			break;							\
		unsigned char *head_ = 0;					\
		unsigned int len_ = 0;						\
		KREAD(head_, skb_, IPVT_OFF_SKB_HEAD);				\
		KREAD(len_, skb_, IPVT_OFF_SKB_LEN);				\
		(x)->head = (__u64)head_;					\
		(x)->len = len_;						\
	} while (0)

static __always_inline __u64 skb_head(struct sk_buff *skb)
{
	unsigned char *head = 0;
	if (skb)
		KREAD(head, skb, IPVT_OFF_SKB_HEAD);
	return (__u64)head;
}

/* The slave owning an address: struct ipvl_addr starts with `struct ipvl_dev
 * *master`, and struct ipvl_dev with `struct net_device *dev` (unchanged since
 * 4.x). *master_out: the ipvl_dev (0: none). */
static __always_inline struct net_device *owner_dev(void *addr, __u64 *master_out)
{
	void *master = 0;
	struct net_device *dev = 0;
	if (addr)
		bpf_probe_read_kernel(&master, sizeof(master), addr);
	if (master)
		bpf_probe_read_kernel(&dev, sizeof(dev), master);
	*master_out = (__u64)master;
	return dev;
}

static __always_inline void ev_skb(struct ipvt_event *e, struct sk_buff *skb, int with_hdr)
{
	unsigned char *data = 0;
	__u16 mac = 0xffff;
	unsigned int data_len = 0;

	FILL_SKB(e, skb);
	if (!skb || !with_hdr)
		return;   /* a helper's: three kernel reads fewer */
	unsigned char *head = (unsigned char *)e->head;
	unsigned int len = e->len;
	KREAD(data, skb, IPVT_OFF_SKB_DATA);
	KREAD(mac, skb, IPVT_OFF_SKB_MAC_HEADER);
	KREAD(data_len, skb, IPVT_OFF_SKB_DATA_LEN);
	unsigned char *start = data;
	long linear = (long)len - (long)data_len;
	if (mac != 0xffff && head + mac <= data) {
		start = head + mac;
		linear += data - start;
	} else {
		e->flags |= IPVT_F_NO_MAC;
	}
	if (linear <= 0)
		return;
	if (linear > IPVT_SINK_HDR)
		linear = IPVT_SINK_HDR;
	/* only the frame's own bytes: never the tailroom after it (stale data
	 * of other traffic) nor, below, what an earlier frame left in this
	 * memory (a record slot is reused) */
	__u32 n = linear;
	asm volatile("%[n] &= 0xff" : [n] "+r"(n));
	if (n == 0 || n > IPVT_HDR_MAX)
		return;
	/* a record pads the frame to 8 bytes: the word the frame ends in is
	 * zeroed first, so the padding never holds an earlier frame's bytes */
	__u32 last = (n - 1) & 0x78;
	*(__u64 *)(e->hdr + last) = 0;
	if (bpf_probe_read_kernel(e->hdr, n, start) != 0)
		return;
	e->hdr_len = n;
	e->flags |= IPVT_F_HAS_HDR;
}

/* Mark this task's multicast worker run lossy: its return says so
 * (IPVT_F_LOST), and what it delivered is incomplete. */
static __always_inline void worker_lossy(void)
{
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 *w = workers.lookup(&tid);
	if (w)
		*w |= IPVT_WORKER_LOSSY;
}

/* An event could not be reserved (it is counted per probe). Of the events,
 * only the multicast worker's belong to a context, its run: a context's own
 * evidence is its record (rec_close), and the L3S path's ids are never on a
 * stack. */
static __always_inline void note_loss(struct ipvt_event *e)
{
	if (e->flags & IPVT_F_WORKER)
		worker_lossy();
}

/* ---- contexts opened where the kernel keeps hits out ------------------ *
 * The kernel runs no BPF program while one that keeps it out is running on
 * the CPU: a kprobe's program keeps out every kprobe program
 * (bpf_prog_active, a per-CPU count); a trampoline's (fentry/fexit) and,
 * from 6.7, a raw tracepoint's program only itself (its prog->active, a
 * per-CPU mark set before the program's first instruction and cleared after
 * its last). A softirq run at the end of an interrupt taken there has its
 * hits kept out while its context still opens: with trampolines its
 * queue_xmit opens one (on_xmit is another program) whose __dev_queue_xmit
 * hit is kept out, and the record would close as whole (seen on Debian 7.2:
 * an `unknown` row marked complete). The interrupted program stays marked
 * until the softirq is done, so a context opened then knows, exactly: it
 * reads the marks of ipvtrace's trampoline and raw tracepoint programs
 * (`watched`, their prog->active, which the loader learns once by a kprobe
 * on bpf_prog_get_info_by_fd), and, opened by a trampoline, bpf_prog_active.
 * (A context a kprobe opens ran: no kprobe's program was running.) Such a
 * context is flagged incomplete, counted as `kept_out`. The kernel's own
 * count of these skips (bpf_prog_inc_misses_counter) is notrace: no kprobe.
 * Not covered: PREEMPT_RT, where a task can be preempted inside a program
 * after another task's context opened (the per-task stacks; no trampolines
 * there), and the per-CPU areas' address unknown (softirq_check none). */
#ifdef IPVT_WATCH_ACTIVE
/* IPVT_WATCH_ACTIVE programs' prog->active (the loader's; one it could not
 * learn is 1 << 63, which no CPU's area turns into a readable address) */
struct ipvt_watch {
	__u64 active[IPVT_WATCH_ACTIVE];
};
BPF_ARRAY(watched, struct ipvt_watch, 1);
/* prog id -> its prog->active, filled while the loader reads each
 * program's info (on_prog_info, attached only then) */
BPF_HASH(prog_actives, __u32, __u64, 256);

/* bpf_prog_get_info_by_fd(file, prog, attr, uattr) */
int on_prog_info(struct pt_regs *ctx)
{
	void *prog = (void *)PT_REGS_PARM2(ctx);
	void *aux = 0;
	__u64 active = 0;
	__u32 id = 0;
	if (bpf_probe_read_kernel(&aux, sizeof(aux), prog + IPVT_OFF_PROG_AUX) != 0 ||
	    bpf_probe_read_kernel(&active, sizeof(active), prog + IPVT_OFF_PROG_ACTIVE) != 0 ||
	    !aux || !active ||
	    bpf_probe_read_kernel(&id, sizeof(id), aux + IPVT_OFF_AUX_ID) != 0)
		return 0;
	prog_actives.update(&id, &active);
	return 0;
}
#endif

/* This CPU's per-CPU area (x86-64: __per_cpu_offset[cpu]), 0: unknown. */
static __always_inline __u64 percpu_base(void)
{
	__u64 base = 0;
#ifdef IPVT_PERCPU_OFFSETS
	__u64 cpu = bpf_get_smp_processor_id();
	bpf_probe_read_kernel(&base, sizeof(base), (const void *)(IPVT_PERCPU_OFFSETS + cpu * 8));
#endif
	return base;
}

/* How many of the watched programs are marked running on this CPU. */
static __always_inline __u32 watched_running(__u64 base)
{
	__u32 sum = 0;
#ifdef IPVT_WATCH_ACTIVE
	int zero = 0;
	struct ipvt_watch *w = watched.lookup(&zero);
	if (!w || !base)
		return 0;
	/* one read each, no branch: 6.1's verifier gave up on a loop here in
	 * on_xmit ("the sequence of 8193 jumps is too complex"). A failed read
	 * leaves a at 0. */
#pragma unroll
	for (int i = 0; i < IPVT_WATCH_ACTIVE; i++) {
		int a = 0;
		bpf_probe_read_kernel(&a, sizeof(a), (const void *)(w->active[i] + base));
		sum += a;
	}
#endif
	return sum;
}

/* preempt_count's bits of an interrupt under way: NMI_MASK | HARDIRQ_MASK |
 * SOFTIRQ_OFFSET (a softirq served; not SOFTIRQ_DISABLE_OFFSET) */
#define IPVT_INTERRUPT_BITS 0x00ff0100

/* Will the kernel keep some of the hits of the context *kind* opens now out? */
static __always_inline int opened_kept_out(__u16 kind)
{
#if defined(IPVT_WATCH_ACTIVE) || defined(IPVT_BPF_PROG_ACTIVE)
	__u64 base = percpu_base();
	__u32 own = 0;
	if (!base)
		return 0;
#if defined(IPVT_KEEPOUT_INTERRUPTED_ONLY) && defined(IPVT_PREEMPT_COUNT)
	/* No program of the plan can be preempted by another task here
	 * (probes.keepout_cflags): a mark is set under a context only when the
	 * context's code interrupted that program's run. Outside an interrupt,
	 * one read instead of one per program. */
	int pc = 0;
	if (bpf_probe_read_kernel(&pc, sizeof(pc), (const void *)(base + IPVT_PREEMPT_COUNT)) == 0 &&
	    !(pc & IPVT_INTERRUPT_BITS))
		return 0;
#endif
#if defined(IPVT_FENTRY_XMIT)
	if (kind == IPVT_P_XMIT) {
		own = 1;   /* on_xmit's own mark: it is watched */
#ifdef IPVT_BPF_PROG_ACTIVE
		int n = 0;
		if (bpf_probe_read_kernel(&n, sizeof(n),
					  (const void *)(base + IPVT_BPF_PROG_ACTIVE)) == 0 && n > 0)
			return 1;
#endif
	}
#endif
	return watched_running(base) > own;
#else
	return 0;
#endif
}

static __always_inline __u32 rec_size(struct ipvt_rec *r)
{
	__u32 size = sizeof(struct ipvt_rec) + ((r->hdr_len + 7) & ~7) +
		     r->nhits * sizeof(struct ipvt_hit);
	asm volatile("" : "+r"(size));
	return size;
}

/* rec_open turns an event written in place into a record's head: the two
 * structs must share every offset up to the frame, which follows both. */
#define IPVT_REC_LIKE_EVENT(f)							\
	_Static_assert(__builtin_offsetof(struct ipvt_rec, f) ==		\
		       __builtin_offsetof(struct ipvt_event, f),		\
		       "struct ipvt_rec." #f " is not where struct ipvt_event has it")
IPVT_REC_LIKE_EVENT(ts);
IPVT_REC_LIKE_EVENT(skb);
IPVT_REC_LIKE_EVENT(head);
IPVT_REC_LIKE_EVENT(ctx);
IPVT_REC_LIKE_EVENT(ret);
IPVT_REC_LIKE_EVENT(cpu);
IPVT_REC_LIKE_EVENT(pid);
IPVT_REC_LIKE_EVENT(netns);
IPVT_REC_LIKE_EVENT(ifindex);
IPVT_REC_LIKE_EVENT(len);
IPVT_REC_LIKE_EVENT(probe);
IPVT_REC_LIKE_EVENT(depth);
IPVT_REC_LIKE_EVENT(flags);
IPVT_REC_LIKE_EVENT(hdr_len);
IPVT_REC_LIKE_EVENT(ifname);
_Static_assert(sizeof(struct ipvt_rec) == __builtin_offsetof(struct ipvt_event, hdr),
	       "a record's frame must start where an event's hdr does");

/* Turn the entry's event, written in place in its stack entry's record
 * (struct ipvt_rec has the event's offsets, the frame right after it), into
 * the head of the context's record: no copy of the event or its frame. */
static __always_inline void rec_open(struct ipvt_event *e)
{
	struct ipvt_rec *r = (struct ipvt_rec *)e;
	if (!(e->flags & IPVT_F_HAS_HDR))
		r->hdr_len = 0;
	r->kind = e->probe;
	r->probe = IPVT_P_CONTEXT;
	r->nhits = 0;
	r->ret_dt = 0;
	r->pad0 = 0;
	r->pad1 = 0;
	r->ret = 0;
}

/* The n-th hit of the record in buf (one of its nhits), or 0. */
static __always_inline struct ipvt_hit *rec_hit(__u8 *buf, __u32 n)
{
	struct ipvt_rec *r = (struct ipvt_rec *)buf;
	__u32 off = sizeof(struct ipvt_rec) + ((r->hdr_len + 7) & ~7) +
		    n * sizeof(struct ipvt_hit);
	asm volatile("%[off] &= 1023" : [off] "+r"(off));
	if (n >= r->nhits || off > IPVT_REC_MAX - sizeof(struct ipvt_hit))
		return 0;
	return (struct ipvt_hit *)(buf + off);
}

/* Is this context (stack entry i) left over from a missed return probe? */
static __always_inline int ctx_stale(struct ipvt_stack *st, __u32 i)
{
#ifdef IPVT_STACK_PER_TASK
	return 0;   /* by time, never: see IPVT_STALE_NS; ctx_push drops them */
#else
	return bpf_ktime_get_ns() - st->ts[i] > IPVT_STALE_NS;
#endif
}

/* Open a context; returns its id. IPVT_STACK_MAX is a power of two: indexes
 * are masked so the verifier sees them bounded. *sp*: the stack pointer at
 * the entry probe. Per task, all of a task's contexts live on its own kernel
 * stack (PREEMPT_RT runs softirqs in task context, never on the IRQ stack):
 * an open context whose entry was at or below this entry's stack pointer has
 * returned, its return probe missed, and is dropped here. */
static __always_inline __u64 ctx_push(__u16 kind, __u8 *depth_out, __u64 sp)
{
	struct ipvt_stack *st = stack_get(1);
	if (!st)
		return 0;
	__u32 d = st->depth;
#ifdef IPVT_STACK_PER_TASK
	/* one per push: a deeper leftover is dropped when it is on top again */
	if (d > 0 && d <= IPVT_STACK_MAX && st->sp[stack_idx(d - 1)] <= sp) {
		stat_inc(IPVT_S_STACK_STALE);
		d--;
	}
	st->sp[stack_idx(d)] = sp;
#endif
	if (d >= IPVT_STACK_MAX) {
		stat_inc(IPVT_S_STACK_OVERFLOW);
		d = 0;
	}
	__u64 id = new_ctx_id();
	__u32 i = stack_idx(d);
	st->id[i] = id;
	st->ts[i] = bpf_ktime_get_ns();
	st->kind[i] = kind;
	st->filtered[i] = 0;
	st->lossy[i] = 0;
	if (opened_kept_out(kind)) {
		st->lossy[i] = 1;
		stat_inc(IPVT_S_KEPT_OUT);
	}
	st->enq_skb[i] = 0;
	st->depth = d + 1;
	*depth_out = d + 1;
	return id;
}

/* Close the innermost context of this kind; skip ones whose return was lost.
 * *idx_out: its slot, still readable until the next push. */
static __always_inline __u64 ctx_pop_at(__u16 kind, __u8 *depth_out, __u8 *filtered,
					 __u32 *idx_out, __u8 *lossy)
{
	struct ipvt_stack *st = stack_get(0);
	if (!st)
		return 0;
	__u64 id = 0;
#pragma unroll
	for (int n = 0; n < IPVT_STACK_MAX; n++) {
		__u32 d = st->depth;
		if (d == 0 || d > IPVT_STACK_MAX)
			break;
		__u32 i = stack_idx(d - 1);
		*depth_out = d;
		st->depth = d - 1;
		if (st->kind[i] == kind) {
			id = st->id[i];
			*filtered = st->filtered[i];
			*lossy = st->lossy[i];
			*idx_out = i;
			break;
		}
		stat_inc(IPVT_S_STACK_MISMATCH);
	}
	return id;
}

/* Is this task serving a softirq? The multicast worker's kworker runs the
 * pending softirqs at each local_bh_enable (and an interrupt's tail may run
 * them on its stack): the slaves' stacks, the host's traffic. Their hits
 * outside any ipvlan context are not the worker's. SOFTIRQ_OFFSET in
 * preempt_count, a per-CPU variable (x86-64: __preempt_count, or pcpu_hot
 * 6.2-6.14); on PREEMPT_RT in the task (softirq_disable_cnt). Read only on
 * the worker's path, where its hit is about to be sent (worker_event's
 * callers) or where it keeps state (on_fwd, on_fwd_ret): not in each
 * helper's program. 0 where probes.py found neither (the note says so). */
#define IPVT_SOFTIRQ_OFFSET 0x100
static __always_inline int serving_softirq(void)
{
#ifdef IPVT_PERCPU_OFFSETS
	int pc = 0;
	__u64 base = percpu_base();
	if (base &&
	    bpf_probe_read_kernel(&pc, sizeof(pc), (const void *)(base + IPVT_PREEMPT_COUNT)) == 0 &&
	    (pc & IPVT_SOFTIRQ_OFFSET))
		return 1;
#endif
#ifdef IPVT_RT_SOFTIRQ_CNT_OFF
	int cnt = 0;
	KREAD(cnt, bpf_get_current_task(), IPVT_RT_SOFTIRQ_CNT_OFF);
	if (cnt & IPVT_SOFTIRQ_OFFSET)
		return 1;
#endif
	return 0;
}

/* The innermost open context on this CPU (its stack and entry in *st_out,
 * *idx_out), or the worker's (IPVT_F_WORKER in *flags, *st_out 0: the hit
 * may still be a softirq's that its task serves, see serving_softirq), or 0. */
static __always_inline __u64 ctx_current(__u8 *depth_out, __u8 *flags,
					    struct ipvt_stack **st_out, __u32 *idx_out)
{
	struct ipvt_stack *st = stack_get(0);
	*st_out = 0;
	if (st) {
		__u32 d = st->depth;
		if (d > 0 && d <= IPVT_STACK_MAX) {
			__u32 i = stack_idx(d - 1);
			if (ctx_stale(st, i)) {
				stat_inc(IPVT_S_STACK_STALE);
				st->depth = 0;
			} else if (st->filtered[i]) {
				return 0;   /* inside a packet the filter rejected */
			} else {
				*depth_out = d;
				*st_out = st;
				*idx_out = i;
				return st->id[i];
			}
		}
	}
	int zero = 0;
	__s64 *running = workers_in.lookup(&zero);
	if (!running || *running <= 0)
		return 0;
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 *w = workers.lookup(&tid);
	if (w) {
		*flags |= IPVT_F_WORKER;
		*depth_out = 0;
		return *w & ~IPVT_WORKER_LOSSY;
	}
	return 0;
}

/* A helper's hit, written where it is kept: in place, as the next hit of
 * the innermost open context's record (no scratch event to clear, fill and
 * copy, no search of the stack for its context); in the multicast worker,
 * which has no record, in a scratch hit that hit_end sends as an event.
 * The hit comes zeroed, with its probe, time and flags (IPVT_F_WORKER);
 * 0: outside any context, in a packet the filter rejected, or the record is
 * full (then the context is marked lossy: its packet will be incomplete).
 * Only hit_end keeps it: a handler that returns before leaves no trace. */
BPF_PERCPU_ARRAY(scratch_hit, struct ipvt_hit, IPVT_P_MAX);

static __always_inline struct ipvt_hit *hit_begin(__u16 probe, int tail, struct ipvt_rec **rec_out,
						  __u64 *worker_out)
{
	__u8 depth = 0, flags = 0;
	struct ipvt_stack *st = 0;
	__u32 i = 0;
	__u64 id = ctx_current(&depth, &flags, &st, &i);
	struct ipvt_hit *h = 0;
	*rec_out = 0;
	*worker_out = 0;
	if (!id)
		return 0;
	if (st) {
		i = stack_idx(i);
		__u8 *buf = st->rec[i];
		struct ipvt_rec *r = (struct ipvt_rec *)buf;
		__u32 off = rec_size(r);
		asm volatile("%[off] &= 1023" : [off] "+r"(off));
		if (r->nhits >= IPVT_HITS_MAX || off > IPVT_REC_MAX - sizeof(struct ipvt_hit)) {
			st->lossy[i] = 1;   /* the packet is incomplete, and says so */
			stat_inc(IPVT_S_HITS_FULL);
			return 0;
		}
		h = (struct ipvt_hit *)(buf + off);
		__builtin_memset(h, 0, sizeof(*h));
		if (IPVT_SINK_HIT_TIMES) {
			__u64 dt = bpf_ktime_get_ns() - r->ts;
			h->dt = dt > 0xffffffffULL ? 0xffffffff : (__u32)dt;
		}
		*rec_out = r;
	} else {
		/* a softirq its task serves is not the worker's; and checked
		 * before the scratch: a free there may be inside this program's
		 * run in the task (a pre-6.7 raw tracepoint's, unguarded) */
		if (serving_softirq())
			return 0;
		int slot = tail ? IPVT_KPROBE_SLOT : probe;   /* see scratch */
		h = scratch_hit.lookup(&slot);
		if (!h)
			return 0;
		__builtin_memset(h, 0, sizeof(*h));
		*worker_out = id;
	}
	h->probe = probe;
	h->flags = flags;
	return h;
}

/* An RX context that closes: is its frame one a slave's TX handed to the
 * parent (echo_skbs)? Then it is that packet's second half. */
static __always_inline int echo_of(struct ipvt_rec *r)
{
	if (r->kind != IPVT_P_RX)
		return 0;
	__u64 key = r->skb;
	__u64 *head = echo_skbs.lookup(&key);
	if (!head)
		return 0;
	int same = *head == r->head;
	echo_skbs.delete(&key);
	return same;
}

/* A TX context's hit: a frame handed to the parent (dev_forward_skb before
 * any ipvlan_rcv_frame in the record) is remembered for its RX there, and
 * forgotten when dev_forward_skb says it dropped it (no RX will take the
 * entry, which could then match a later frame in the same memory). Read
 * from the record's hits: no map lookup for the helpers of every packet. */
static __always_inline void echo_note(__u16 p, struct ipvt_hit *h, struct ipvt_rec *r)
{
	if (r->kind != IPVT_P_XMIT || !(p == IPVT_P_FWD || (p == IPVT_P_FWD_RET && h->ret != 0)))
		return;
	__u8 *buf = (__u8 *)r;
	__u64 fwd = 0;
	/* the hits before this one (the last kept: r->nhits - 1) */
#pragma clang loop unroll(disable)
	for (__u32 n = 0; n < IPVT_HITS_MAX; n++) {
		struct ipvt_hit *o = rec_hit(buf, n);
		if (!o || n + 1 >= r->nhits)
			break;
		if (o->probe == IPVT_P_RCV_FRAME)
			return;   /* to a slave: its RX is not the parent's */
		if (o->probe == IPVT_P_FWD)
			fwd = o->skb;
	}
	if (p == IPVT_P_FWD) {
		__u64 key = h->skb, head = h->head;
		echo_skbs.update(&key, &head);
	} else if (fwd) {
		echo_skbs.delete(&fwd);   /* NET_RX_DROP: never received */
	}
}

static __always_inline void count_hit_kept(__u16 p, struct ipvt_hit *h, struct ipvt_rec *r);

/* A hit just kept in a record: what another context needs of it before
 * this one closes (the to-parent echo; in `stats`, the worker's runs). */
static __always_inline void hit_kept(__u16 p, struct ipvt_hit *h, struct ipvt_rec *r)
{
	echo_note(p, h, r);
	count_hit_kept(p, h, r);
}

/* ---- where the two builds differ: what becomes of the evidence ------- *
 * Everything above and below gathers the same evidence in both builds: a
 * record per context (its entry, frame and hits) and events outside them
 * (the multicast worker, L3S). The trace build sends them to the ring;
 * `stats` (IPVT_COUNT_ONLY) reads each closed record into a signature and
 * counts it, and joins what spans contexts (the to-parent echo, the worker's
 * deliveries, L3S) in maps, as user space joins records in `live`. */
#ifdef IPVT_COUNT_ONLY

static __always_inline int sig_same(struct ipvt_sig *a, struct ipvt_sig *b)
{
	__u64 *x = (__u64 *)a, *y = (__u64 *)b;
	__u64 diff = 0;
#pragma unroll
	for (int i = 0; i < sizeof(struct ipvt_sig) / 8; i++)
		diff |= x[i] ^ y[i];
	return diff == 0;
}

static __always_inline void count_sig(struct ipvt_sig *s)
{
	int cpu = bpf_get_smp_processor_id();
	int slot;
	__u32 *have = 0;
#ifndef IPVT_STACK_PER_TASK
	int zero = 0;
	struct ipvt_sig_last *last = sig_last.lookup(&zero);
	if (last && last->slot1 && last->slot1 <= IPVT_NR_CPUS * IPVT_SLOTS_PER_CPU &&
	    sig_same(&last->sig, s)) {
		slot = last->slot1 - 1;
		goto count;
	}
#endif
	have = slot_of.lookup(s);
	if (have && *have) {
		slot = *have - 1;
	} else {
		__u64 *next = slot_next.lookup(&cpu);
		if (!next)
			return;
		/* taken for this signature alone; user space reads a slot once its
		 * count is non-zero, and the count is written after the signature.
		 * Per CPU no other program runs in between (bpf_prog_active); per
		 * task (PREEMPT_RT) one can, so the slot is taken by an atomic
		 * fetch-and-add, an instruction the verifier takes from 5.12 on */
#if defined(IPVT_STACK_PER_TASK) && defined(IPVT_HAVE_ATOMIC_FETCH)
		__u64 idx = __sync_fetch_and_add(next, 1);
#else
		__u64 idx = *next;
		*next = idx + 1;
#endif
		if (idx >= IPVT_SLOTS_PER_CPU) {
			stat_inc(IPVT_S_COUNTS_FULL);
			return;
		}
		slot = cpu * IPVT_SLOTS_PER_CPU + (int)idx;
		struct ipvt_slot *fresh = slots.lookup(&slot);
		if (!fresh)
			return;
		__builtin_memcpy(&fresh->sig, s, sizeof(*s));
		__u32 v = slot + 1;
		if (have)
			*have = v;
		else if (slot_of.update(s, &v) != 0)
			stat_inc(IPVT_S_COUNTS_FULL);   /* the hash is full: the next hit takes another slot */
	}
#ifndef IPVT_STACK_PER_TASK
	if (last) {
		__builtin_memcpy(&last->sig, s, sizeof(*s));
		last->slot1 = slot + 1;
	}
count:;
#endif
	struct ipvt_slot *sl = slots.lookup(&slot);
	if (sl)
		__sync_fetch_and_add(&sl->count, 1);
}

/* What the classifier reads from the frame the record kept: multicast dst,
 * EtherType, L4 protocol. */
static __always_inline void sig_frame(struct ipvt_sig *s, __u8 *buf)
{
	struct ipvt_rec *r = (struct ipvt_rec *)buf;
	__u8 *h = buf + sizeof(struct ipvt_rec);
	if (!r->skb)
		return;
	if (r->flags & IPVT_F_NO_MAC) {
		s->hflags |= IPVT_H_NO_MAC;
		return;
	}
	__u16 n = r->hdr_len;
	if (!(r->flags & IPVT_F_HAS_HDR) || n < 14) {
		s->hflags |= IPVT_H_RUNT;
		return;
	}
	if (h[0] & 1)
		s->hflags |= IPVT_H_DST_MCAST;
	s->etype = ((__u16)h[12] << 8) | h[13];
	if (s->etype == 0x0800 && n > 23)
		s->l4 = h[23];
	else if (s->etype == 0x86dd && n > 20)
		s->l4 = h[20];
}

/* A hit's device, as the signature's `to` or `own` device. */
#define SIG_DEV(s, pfx, h)							\
	do {									\
		if ((h)->flags & IPVT_F_HAS_DEV) {				\
			(s)->pfx##netns = (h)->netns;				\
			(s)->pfx##ifindex = (h)->ifindex;			\
		}								\
	} while (0)

/* A closing context's signature, built where the verifier does not follow
 * each value (a map, not the BPF stack): the hits' branches then join again
 * after each hit instead of multiplying through all of them. */
struct ipvt_sig_work {
	struct ipvt_sig sig;
	__u64 enq_skb;   /* the skb given to the multicast queue */
	__u64 master;    /* the ipvl_dev ipvlan_addr_lookup found */
};
BPF_PERCPU_ARRAY(sig_work, struct ipvt_sig_work, 1);

/* The signature of a closed context: its record's entry, frame and hits,
 * read in the order the helpers ran. */
static __always_inline struct ipvt_sig *sig_of_rec(__u8 *buf, __s64 ret, __u8 lossy)
{
	int zero = 0;
	struct ipvt_sig_work *w = sig_work.lookup(&zero);
	if (!w)
		return 0;
	struct ipvt_sig *s = &w->sig;
	struct ipvt_rec *r = (struct ipvt_rec *)buf;
	__builtin_memset(w, 0, sizeof(*w));
	s->kind = r->kind;
	s->netns = r->netns;
	s->ifindex = r->ifindex;
	s->ret = (int)ret;
	if (lossy)
		s->checks |= IPVT_C_LOST;
	sig_frame(s, buf);
	/* a loop the verifier walks (5.3+), not eight copies for clang to build */
#pragma clang loop unroll(disable)
	for (__u32 n = 0; n < IPVT_HITS_MAX; n++) {
		struct ipvt_hit *h = rec_hit(buf, n);
		if (!h)
			break;
		__u16 p = h->probe;
		if (p >= 32)
			continue;
		if (p == IPVT_P_CONSUME) {
			/* only the context's own skb: others are not this packet's */
			if (h->skb == r->skb) {
				s->seen |= 1U << p;
				s->hflags |= IPVT_H_CONSUME_OWN;
			}
			continue;
		}
		if (p == IPVT_P_KFREE) {
			if (!(s->seen & (1U << p)))
				s->reason = h->reason;
			if (w->enq_skb && h->skb == w->enq_skb)
				s->hflags |= IPVT_H_KFREE_ENQ;   /* the backlog was full: never queued */
		} else if (p == IPVT_P_LOOKUP_RET) {
			if (h->aux) {
				s->hflags |= IPVT_H_FOUND;
				SIG_DEV(s, own_, h);
			}
			w->master = h->aux2;
		} else if (p == IPVT_P_RCV_FRAME) {
			/* the GCC clone's arguments: its skb the context's, its
			 * slave the lookup's */
			if (h->skb != r->skb || (w->master && h->aux2 != w->master))
				s->checks |= IPVT_C_CLONE_ARGS;
		} else if (p == IPVT_P_FWD_RET) {
			s->fwd_ret = (int)h->ret;
		} else if (p == IPVT_P_MC_ENQUEUE) {
			w->enq_skb = h->skb;
		} else if (p == IPVT_P_FWD || p == IPVT_P_LOCAL_OUT || p == IPVT_P_LOCAL_OUT6) {
			SIG_DEV(s, to_, h);
		} else if (p == IPVT_P_QXMIT && h->skb == r->skb && !(s->hflags & IPVT_H_OWN_QX)) {
			/* the first __dev_queue_xmit of its own skb is the parent's;
			 * a VLAN or bond parent queues it again on the device below */
			s->hflags |= IPVT_H_OWN_QX;
			if (!(s->seen & ((1U << IPVT_P_LOCAL_OUT) | (1U << IPVT_P_LOCAL_OUT6))))
				SIG_DEV(s, to_, h);
		}
		s->seen |= 1U << p;
	}
	if (echo_of(r))
		s->hflags |= IPVT_H_ECHO;
	return s;
}

/* Count the context in stack entry idx, closed with ret. */
static __always_inline void rec_close(struct ipvt_stack *st, __u32 idx, __s64 ret, __u8 lossy)
{
	struct ipvt_sig *s = sig_of_rec(st->rec[stack_idx(idx)], ret, lossy);
	if (s)
		count_sig(s);
}

/* A hit just kept in a record (hit_kept): what the worker's runs need of
 * it before this context closes. */
static __always_inline void count_hit_kept(__u16 p, struct ipvt_hit *h, struct ipvt_rec *r)
{
	if (p != IPVT_P_MC_ENQUEUE && p != IPVT_P_KFREE)
		return;   /* (no stack lookup for the others) */
	struct ipvt_stack *st = stack_get(0);
	if (!st)
		return;
	__u32 i = stack_idx(r->depth - 1);   /* the record's own stack entry */
	if (p == IPVT_P_MC_ENQUEUE) {
		/* the worker may run on another CPU before this context closes */
		st->enq_skb[i] = h->skb;
		__u64 head = h->head;
		struct mc_head *held = mc_heads.lookup(&head);
		if (held && (held->claim & ~MC_PENDING)) {
			held->claim |= MC_PENDING;   /* for the next run, not the claiming one */
			held->skb = h->skb;
			held->tx = r->kind == IPVT_P_XMIT;
		} else {
			struct mc_head unclaimed = {.skb = h->skb, .tx = r->kind == IPVT_P_XMIT};
			mc_heads.update(&head, &unclaimed);
		}
	} else if (p == IPVT_P_KFREE && st->enq_skb[i] && h->skb == st->enq_skb[i]) {
		/* the backlog was full: never queued, no worker run claims it */
		__u64 head = skb_head((struct sk_buff *)h->skb);
		mc_heads.delete(&head);
	}
}

/* An event outside any record: the multicast worker's deliveries and sends
 * are counted one by one, L3S frames once they reach LOCAL_IN for a slave.
 * p is e's probe, a constant where each caller is inlined, so each probe's
 * program holds only its own branch (so does hit_kept's); on_worker_hit,
 * which sends the worker's hits of every kprobe, holds theirs. */
static __always_inline void ev_submit(__u16 p, struct ipvt_event *e)
{
	__u64 id = e->ctx;
	if (p == IPVT_P_L3_RCV) {
		struct ipvt_l3s l = {};
		l.netns = e->netns;
		l.ifindex = e->ifindex;
		l3s_count.update(&id, &l);
		return;
	}
	if (p == IPVT_P_S2A_RET) {
		struct ipvt_l3s *l = l3s_count.lookup(&id);
		if (l && e->aux && (e->flags & IPVT_F_HAS_DEV) && !l->own_ifindex) {
			l->own_netns = e->netns;
			l->own_ifindex = e->ifindex;
		}
		return;
	}
	if (p == IPVT_P_NF_INPUT) {
		struct ipvt_l3s *l = l3s_count.lookup(&id);
		if (!l)
			return;
		if (l->own_ifindex) {
			struct ipvt_sig s = {};
			s.kind = IPVT_P_L3_RCV;
			s.seen = 1U << IPVT_P_NF_INPUT;
			s.hflags = IPVT_H_FOUND;
			s.netns = l->netns;
			s.ifindex = l->ifindex;
			s.own_netns = l->own_netns;
			s.own_ifindex = l->own_ifindex;
			count_sig(&s);
		}
		l3s_count.delete(&id);
		return;
	}
	if (!(e->flags & IPVT_F_WORKER) ||
	    (p != IPVT_P_FWD && p != IPVT_P_NETIF_RX && p != IPVT_P_QXMIT &&
	     p != IPVT_P_KFREE && p != IPVT_P_CONSUME))
		return;
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 *run = workers.lookup(&tid);
	if (!run)
		return;
	__u64 head = e->head ? e->head : skb_head((struct sk_buff *)e->skb);
	struct mc_head *m = mc_heads.lookup(&head);
	if (!m)
		return;
	/* a free claims only the queued skb itself: a softirq the worker's task
	 * runs may free another skb of the same data (the original of a clone
	 * an RX context just queued for the next run), as the correlator, which
	 * knows a freed skb's head only from the queued skb or the run's own
	 * hits */
	if ((p == IPVT_P_KFREE || p == IPVT_P_CONSUME) && e->skb != m->skb)
		return;
	/* only a frame a slave sent is sent out of the parent by the worker: a
	 * send of an RX frame's data is a reply that reused its freed memory
	 * (as the classifier, which counts out_parent for a TX origin only) */
	if (p == IPVT_P_QXMIT && !m->tx)
		return;
	__u64 *claim = &m->claim;
	if (!mc_claim(claim, *run & ~IPVT_WORKER_LOSSY))
		return;
	/* the worker frees a queued frame it handled: claimed above for this
	 * run, so a later reuse of that memory is not a delivery */
	if (p == IPVT_P_KFREE || p == IPVT_P_CONSUME)
		return;
	if (*claim & MC_SENT)
		return;   /* after the frame's last step: not one of its deliveries */
	if (p == IPVT_P_QXMIT)
		*claim |= MC_SENT;
	struct ipvt_sig w = {};
	w.kind = IPVT_P_MC_WORK;
	w.seen = 1U << p;
	if (e->flags & IPVT_F_HAS_DEV) {
		w.to_netns = e->netns;
		w.to_ifindex = e->ifindex;
	}
	count_sig(&w);
}

static __always_inline void note_site(__u64 location) {}

#else /* the trace build: records and events to the ring buffer */

/* skb -> skb->head of frames a slave's TX forwarded to the parent
 * (tx.l2.to_parent) whose TX record the ring had no room for: the parent's
 * RX of that frame is the second half of a packet whose first half is lost,
 * and its record says so (IPVT_F_LOST), where it would otherwise read as a
 * whole packet of its own (rx.to_host) */
BPF_TABLE("lru_hash", __u64, __u64, echo_lost, 1024);

/* A TX record was not sent: remember its to-parent frame (a dev_forward_skb
 * before any ipvlan_rcv_frame, as the correlator and hit_kept tell them)
 * unless dev_forward_skb said it dropped it: no RX would take the entry,
 * which could then match a later frame in the same memory. */
static __always_inline void echo_orphaned(__u8 *buf)
{
	struct ipvt_rec *r = (struct ipvt_rec *)buf;
	if (r->kind != IPVT_P_XMIT)
		return;
	__u64 key = 0, head = 0;
#pragma clang loop unroll(disable)
	for (__u32 n = 0; n < IPVT_HITS_MAX; n++) {
		struct ipvt_hit *h = rec_hit(buf, n);
		if (!h)
			break;
		if (h->probe == IPVT_P_RCV_FRAME)
			return;   /* to a slave: its RX is not the parent's */
		if (h->probe == IPVT_P_FWD) {
			key = h->skb;
			head = h->head;
		} else if (h->probe == IPVT_P_FWD_RET && h->ret != 0) {
			key = 0;   /* NET_RX_DROP: never received */
		}
	}
	if (key)
		echo_lost.update(&key, &head);
}

/* The context in stack entry idx returned: send its record, once. A record
 * the ring has no room for is counted per entry probe (the packet is lost
 * whole: never a row from part of it; a to-parent frame's RX is flagged). */
static __always_inline void rec_close(struct ipvt_stack *st, __u32 idx, __s64 ret, __u8 lossy)
{
	__u8 *buf = st->rec[stack_idx(idx)];
	struct ipvt_rec *r = (struct ipvt_rec *)buf;
	__u64 dt = bpf_ktime_get_ns() - r->ts;
	r->ret = ret;
	r->ret_dt = dt > 0xffffffffULL ? 0xffffffff : (__u32)dt;
	if (lossy)
		r->flags |= IPVT_F_LOST;
	if (echo_of(r))
		r->flags |= IPVT_F_ECHO;
	/* echo_lost is filled only after a TX record was lost: until then an
	 * RX context reads one array slot, not the hash */
	int tx_lost = IPVT_S_LOST_BASE + IPVT_P_XMIT;
	__u64 *lost_tx = r->kind == IPVT_P_RX ? stats.lookup(&tx_lost) : 0;
	if (lost_tx && *lost_tx) {
		__u64 key = r->skb;
		__u64 *head = echo_lost.lookup(&key);
		if (head) {
			if (*head == r->head)
				r->flags |= IPVT_F_LOST;
			echo_lost.delete(&key);
		}
	}
	__u64 size = rec_size(r);
	asm volatile("" : "+r"(size));
	if (size > IPVT_REC_MAX)
		size = IPVT_REC_MAX;
	if (events.ringbuf_output(buf, size, ring_wake()) != 0) {
		stat_inc(IPVT_S_LOST_BASE + r->kind);
		echo_orphaned(buf);
	}
}

static __always_inline void count_hit_kept(__u16 p, struct ipvt_hit *h, struct ipvt_rec *r) {}

static __always_inline void ev_submit(__u16 probe, struct ipvt_event *e)
{
	__u64 size = sizeof(*e) - IPVT_HDR_MAX;
	/* the captured bytes, zero-padded to 8 (ev_skb zeroed the last word):
	 * the ring rounds every record up to 8 and would otherwise leave what
	 * an earlier record held in the padding, and `record` writes whole
	 * spans of the ring to the file */
	if (e->flags & IPVT_F_HAS_HDR)
		size += (e->hdr_len + 7) & ~7;
	/* clang must not fold the bound below away: the verifier needs it on
	 * the very register handed to the helper */
	asm volatile("" : "+r"(size));
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (events.ringbuf_output(e, size, ring_wake()) != 0) {
		stat_inc(IPVT_S_LOST_BASE + e->probe);
		note_loss(e);
	}
}

/* Where a kept hit's skb was freed, once per distinct address: `record`
 * names these at its end (the trailer's symbols) without reading every
 * record's hits in Python. Full: counted, the rest stay unnamed (hex). */
BPF_HASH(free_sites, __u64, __u8, IPVT_FREE_SITES_MAX);

static __always_inline void note_site(__u64 location)
{
	__u8 one = 1;
	if (!location || free_sites.lookup(&location))
		return;
	if (free_sites.update(&location, &one) != 0)
		stat_inc(IPVT_S_SITES_FULL);
}

#endif /* IPVT_COUNT_ONLY */

/* A worker's hit (in scratch_hit) as its event. */
static __always_inline void worker_event(__u16 probe, struct ipvt_hit *h, __u64 worker)
{
	struct ipvt_event *e = ev_init(probe, worker, 0);
	if (!e)
		return;
	e->skb = h->skb;
	e->head = h->head;
	e->aux = h->aux;
	e->aux2 = h->aux2;
	e->ret = h->ret;
	e->netns = h->netns;
	e->ifindex = h->ifindex;
	e->reason = h->reason;
	e->len = h->len;
	e->flags = h->flags;
	__builtin_memcpy(e->ifname, h->ifname, sizeof(e->ifname));
	ev_submit(probe, e);
}

/* The multicast worker's hits in kprobes leave their program by a tail call
 * to on_worker_hit, which sends them: one copy of worker_event in the
 * object instead of one inlined into each helper's program (a quarter of
 * each, compiled again for every one: bcc has no BPF-to-BPF calls). Its
 * slot is filled before the probes are armed (loader.py); the tracepoints
 * (another program type, which a kprobe's array refuses) keep it inline. */
BPF_PROG_ARRAY(worker_tail, 1);

int on_worker_hit(struct pt_regs *ctx)
{
	int slot = IPVT_KPROBE_SLOT;
	struct ipvt_hit *h = scratch_hit.lookup(&slot);
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 *w = workers.lookup(&tid);
	if (h && w)
		worker_event(h->probe, h, *w & ~IPVT_WORKER_LOSSY);
	return 0;
}

/* Keep the hit hit_begin gave: one more in its record, or the worker's
 * event (tail: from a kprobe, by on_worker_hit). */
static __always_inline void hit_end(void *ctx, int tail, __u16 probe, struct ipvt_hit *h,
				    struct ipvt_rec *r, __u64 worker)
{
	if (r) {
		r->nhits++;
		hit_kept(probe, h, r);
		return;
	}
	if (!tail) {
		worker_event(probe, h, worker);
		return;
	}
	worker_tail.call(ctx, 0);
	/* only when the tail call failed: the run's evidence is incomplete */
	stat_inc(IPVT_S_LOST_BASE + probe);
	worker_lossy();
}

/* The common helper event: a device and an skb (without its bytes). */
static __always_inline int emit_dev_skb(__u16 probe, __u64 id, __u8 depth, __u8 flags,
					struct net_device *dev, struct sk_buff *skb)
{
	struct ipvt_event *e = ev_init(probe, id, depth);
	if (!e)
		return 0;
	e->flags |= flags;
	FILL_DEV(e, dev);
	ev_skb(e, skb, 0);
	ev_submit(probe, e);
	return 0;
}

/* ---- entry points ---------------------------------------------------- */

#ifdef IPVT_FILTER_EXPR
#include "ipvtrace_filter.h"
#endif

/* Is the innermost open context on this CPU (task) one the filter rejected? */
static __always_inline int in_filtered_ctx(void)
{
#ifdef IPVT_FILTER_EXPR
	struct ipvt_stack *st = stack_get(0);
	if (!st)
		return 0;
	__u32 d = st->depth;
	return d > 0 && d <= IPVT_STACK_MAX && st->filtered[stack_idx(d - 1)];
#else
	return 0;
#endif
}

/* A rejected frame's data, for the events outside its context. */
static __always_inline void filter_out_head(__u64 head)
{
#ifdef IPVT_FILTER_EXPR
	__u8 one = 1;
	if (head)
		filtered_heads.update(&head, &one);
#endif
}

static __always_inline int head_filtered(__u64 head)
{
#ifdef IPVT_FILTER_EXPR
	return head && filtered_heads.lookup(&head) != 0;
#else
	return 0;
#endif
}

/* Open a context for an entry probe and report the frame as ipvlan got it. */
static __always_inline int entry(__u16 probe, struct sk_buff *skb, struct net_device *dev,
				 __u64 sp)
{
	__u8 depth = 0;
	if (!is_armed())
		return 0;
	__u64 id = ctx_push(probe, &depth, sp);
	struct ipvt_stack *st = stack_get(0);
	if (!st || depth == 0)
		return 0;
	/* the entry is written where its record lives (rec_open) */
	st->dev[stack_idx(depth - 1)] = (__u64)dev;
	struct ipvt_event *e = (struct ipvt_event *)st->rec[stack_idx(depth - 1)];
	ev_fill(e, probe, id, depth);
	FILL_DEV(e, dev);
	ev_skb(e, skb, 1);
#ifdef IPVT_FILTER_EXPR
	if (pkt_match(e)) {
		/* the allocator reuses skb->head: a packet the filter rejected
		 * earlier at this address must not hide this one's evidence
		 * (looked up first: a delete takes the bucket's lock) */
		__u64 head = e->head;
		if (filtered_heads.lookup(&head))
			filtered_heads.delete(&head);
	} else {
		st->filtered[stack_idx(depth - 1)] = 1;
		return 0;
	}
#endif
	rec_open(e);
	return 0;
}

/* Close the entry's context: its record goes out with its return value. */
static __always_inline int entry_close(__u16 probe, int ret)
{
	__u8 depth = 0, filtered = 0, lossy = 0;
	__u32 idx = 0;
	__u64 id = ctx_pop_at(probe, &depth, &filtered, &idx, &lossy);
	if (!id)
		return 0;
	struct ipvt_stack *st = stack_get(0);
	if (!st)
		return 0;
	if (filtered) {
		/* a rejected frame the rx_handler passes on: the L3S hooks
		 * see it next (on_l3_rcv) */
		if (probe == IPVT_P_RX && ret == 3 /* RX_HANDLER_PASS */)
			filter_out_head(((struct ipvt_event *)st->rec[stack_idx(idx)])->head);
		return 0;
	}
	rec_close(st, idx, ret, lossy);
	return 0;
}

static __always_inline int entry_ret(struct pt_regs *ctx, __u16 probe)
{
	return entry_close(probe, (int)PT_REGS_RC(ctx));
}

/* ---- ipvlan's own functions: a kprobe, or an fentry/fexit ---------- *
 * With IPVT_FENTRY_<PROBE>, the same program name is an fentry/fexit
 * program (its arguments an array, an fexit's return after them) that the
 * loader loads itself on the module's BTF (bcc 0.26 loads them on
 * vmlinux's functions only). Never on PREEMPT_RT (probes.trampolines), so
 * the entry's stack pointer, which only the per-task stacks read, is 0. */

/* ipvlan_queue_xmit(skb, dev): dev is the slave */
static __always_inline int do_xmit(struct sk_buff *skb, struct net_device *dev, __u64 sp)
{
	/* an xmit context of this device still open was not closed by
	 * net_dev_xmit (see on_xmit_done): a device's xmit nests in its own
	 * only in a routing loop, which the kernel ends as a dead loop */
	struct ipvt_stack *st = stack_get(0);
	if (st) {
		__u32 d = st->depth;
		if (d > 0 && d <= IPVT_STACK_MAX) {
			__u32 i = stack_idx(d - 1);
			if (st->kind[i] == IPVT_P_XMIT && st->dev[i] == (__u64)dev) {
				stat_inc(IPVT_S_STACK_STALE);
				st->depth = d - 1;
			}
		}
	}
	return entry(IPVT_P_XMIT, skb, dev, sp);
}

#ifdef IPVT_FENTRY_XMIT
int on_xmit(__u64 *ctx)
{
	return do_xmit((struct sk_buff *)ctx[0], (struct net_device *)ctx[1], 0);
}
#else
int on_xmit(struct pt_regs *ctx)
{
	ran(IPVT_P_XMIT);
	return do_xmit((struct sk_buff *)PT_REGS_PARM1(ctx), (struct net_device *)PT_REGS_PARM2(ctx),
		       PT_REGS_SP(ctx));
}
#endif

/*
 * net:net_dev_xmit(skb, rc, dev, len), raw: xmit_one reports what
 * ndo_start_xmit returned, for ipvlan ipvlan_start_xmit's return, which is
 * ipvlan_queue_xmit's. It closes the xmit context that this skb and device
 * opened, in place of a return probe on ipvlan_queue_xmit: no instances to
 * run out of under load (a missed return left a packet incomplete). Not
 * faster: bench/ab.py measured the two alike (README). It fires for
 * every device's xmit on the node:
 * most find no open context. The parent's xmit inside an L2 context carries
 * the same skb but the parent device, and is not the close.
 *
 * An xmit that never passes xmit_one (pktgen, netpoll, AF_PACKET's
 * PACKET_QDISC_BYPASS call ndo_start_xmit directly) leaves its context
 * open: the next xmit entry for the same device drops it (on_xmit, counted
 * stack_stale), as a missed return probe's context is.
 */
static __always_inline int xmit_close(__u64 skb, __u64 dev, int rc)
{
	struct ipvt_stack *st = stack_get(0);
	if (!st)
		return 0;
	__u32 d = st->depth;
	if (d == 0 || d > IPVT_STACK_MAX)
		return 0;
	__u32 at = 0;   /* depth of the matching context, 0: none */
#pragma unroll
	for (int n = 0; n < IPVT_STACK_MAX; n++) {
		if (n < d && !at) {
			__u32 i = stack_idx(d - 1 - n);
			struct ipvt_rec *r = (struct ipvt_rec *)st->rec[i];
			if (st->kind[i] == IPVT_P_XMIT && st->dev[i] == dev && r->skb == skb)
				at = d - n;
		}
	}
	if (!at)
		return 0;
	/* contexts above it missed their close (as ctx_pop_at counts them) */
#pragma unroll
	for (int n = 0; n < IPVT_STACK_MAX; n++)
		if (at + n < d)
			stat_inc(IPVT_S_STACK_MISMATCH);
	st->depth = at;
	return entry_close(IPVT_P_XMIT, rc);
}

/* With IPVT_FENTRY_XMIT_RET: an fexit on ipvlan_queue_xmit(skb, dev), its
 * return after the two arguments. It runs for ipvlan's xmits only (the
 * tracepoint for every device's), and for those that skip xmit_one too. */
#ifdef IPVT_FENTRY_XMIT_RET
int on_xmit_done(__u64 *ctx)
{
	return xmit_close(ctx[0], ctx[1], (int)ctx[2]);
}
#elif defined(IPVT_KRETPROBE_XMIT_RET)
/* A kretprobe on ipvlan_queue_xmit where a raw tracepoint's program can be
 * preempted (PREEMPT_RT from 6.13, probes.py): the innermost xmit context
 * of this task closes with the return value, as an RX one does. */
int on_xmit_done(struct pt_regs *ctx)
{
	ran(IPVT_P_XMIT_RET);
	return entry_ret(ctx, IPVT_P_XMIT);
}
#else
int on_xmit_done(struct bpf_raw_tracepoint_args *ctx)
{
	return xmit_close(ctx->args[0], ctx->args[2], (int)ctx->args[1]);
}
#endif

/* ipvlan_handle_frame(pskb): the rx_handler of the parent (skb->dev). A
 * kprobe always: an fentry program may not read a struct sk_buff ** (probes.py) */
int on_rx(struct pt_regs *ctx)
{
	ran(IPVT_P_RX);
	struct sk_buff **pskb = (struct sk_buff **)PT_REGS_PARM1(ctx);
	struct sk_buff *skb = 0;
	struct net_device *dev = 0;
	bpf_probe_read_kernel(&skb, sizeof(skb), pskb);
	if (skb)
		KREAD(dev, skb, IPVT_OFF_SKB_DEV);
	return entry(IPVT_P_RX, skb, dev, PT_REGS_SP(ctx));
}

int on_rx_ret(struct pt_regs *ctx)
{
	ran(IPVT_P_RX_RET);
	return entry_ret(ctx, IPVT_P_RX);
}

/* ipvlan_process_multicast(work): the worker's run, by its task. With
 * IPVT_FENTRY_MC_WORK(_RET) an fentry/fexit program (probes.py: a kprobe's
 * program runs with current_kprobe set, softirqs enabled, and every kprobe
 * hit in a softirq run at the end of an interrupt taken then is missed) */
static __always_inline int mc_work_open(void)
{
	if (!is_armed())
		return 0;
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 id = new_ctx_id();
	/* counted in workers_in before its first hit looks, once per entry
	 * (a task's run whose return was missed left its entry, counted) */
	__u64 *old = workers.lookup(&tid);
	if (old) {
		*old = id;
	} else if (workers.update(&tid, &id) == 0) {
		int zero = 0;
		__s64 *running = workers_in.lookup(&zero);
		if (running)
			__sync_fetch_and_add(running, 1);
	}
	struct ipvt_event *e = ev_init(IPVT_P_MC_WORK, id, 0);
	if (!e)
		return 0;
	e->flags |= IPVT_F_WORKER;
	ev_submit(IPVT_P_MC_WORK, e);
	return 0;
}

#ifdef IPVT_FENTRY_MC_WORK
int on_mc_work(__u64 *ctx)
{
	return mc_work_open();
}
#else
int on_mc_work(struct pt_regs *ctx)
{
	ran(IPVT_P_MC_WORK);
	return mc_work_open();
}
#endif

static __always_inline int mc_work_close(void)
{
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 *w = workers.lookup(&tid);
	if (!w)
		return 0;   /* the run began before the probes were armed */
	__u64 id = *w & ~IPVT_WORKER_LOSSY;
	__u8 lossy = (*w & IPVT_WORKER_LOSSY) != 0;
	int zero = 0;
	__s64 *running = workers_in.lookup(&zero);
	if (workers.delete(&tid) == 0 && running)
		__sync_fetch_and_add(running, -1);
	struct ipvt_event *e = ev_init(IPVT_P_MC_WORK_RET, id, 0);
	if (!e)
		return 0;
	e->flags |= IPVT_F_WORKER;
	if (lossy)
		e->flags |= IPVT_F_LOST;
	ev_submit(IPVT_P_MC_WORK_RET, e);
	return 0;
}

#ifdef IPVT_FENTRY_MC_WORK_RET
int on_mc_work_ret(__u64 *ctx)
{
	return mc_work_close();
}
#else
int on_mc_work_ret(struct pt_regs *ctx)
{
	ran(IPVT_P_MC_WORK_RET);
	return mc_work_close();
}
#endif

/* ---- helpers: reported only inside a context ------------------------- */

/*
 * ipvlan_rcv_frame is static; Debian 6.1/6.12 only have the GCC clone
 * ipvlan_rcv_frame.isra.0(struct ipvl_dev *, struct sk_buff **, bool).
 * The first argument is reported raw (aux2) and never dereferenced: it is
 * checked against ipvlan_addr_lookup's result, and *pskb against the
 * context's skb, before this clone's argument list is trusted (by user space
 * in the trace build, by sig_of_rec in `stats`).
 */
int on_rcv_frame(struct pt_regs *ctx)
{
	ran(IPVT_P_RCV_FRAME);
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct ipvt_hit *h = hit_begin(IPVT_P_RCV_FRAME, 1, &r, &w);
	if (!h)
		return 0;
	struct sk_buff **pskb = (struct sk_buff **)PT_REGS_PARM2(ctx);
	struct sk_buff *skb = 0;
	bpf_probe_read_kernel(&skb, sizeof(skb), pskb);
	if (PT_REGS_PARM3(ctx) & 0xff)
		h->flags |= IPVT_F_LOCAL;
	h->aux2 = PT_REGS_PARM1(ctx);
	FILL_SKB(h, skb);
	hit_end(ctx, 1, IPVT_P_RCV_FRAME, h, r, w);
	return 0;
}

/* aux = the ipvl_addr (0: no slave), aux2 = its ipvl_dev, dev = the slave;
 * into an event or a hit. */
#define FILL_OWNER(x, addr)							\
	do {									\
		void *addr_ = (addr);						\
		__u64 master_ = 0;						\
		(x)->aux = (__u64)addr_;					\
		if (!addr_)							\
			break;							\
		struct net_device *owner_ = owner_dev(addr_, &master_);		\
		(x)->aux2 = master_;						\
		FILL_DEV(x, owner_);						\
	} while (0)

static __always_inline int do_lookup_ret(void *ctx, int tail, void *addr)
{
	kprobe_ran(IPVT_P_LOOKUP_RET, tail);
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct ipvt_hit *h = hit_begin(IPVT_P_LOOKUP_RET, tail, &r, &w);
	if (!h)
		return 0;
	FILL_OWNER(h, addr);
	hit_end(ctx, tail, IPVT_P_LOOKUP_RET, h, r, w);
	return 0;
}

/* ipvlan_addr_lookup(port, lyr3h, addr_type, use_dest): the slave's address */
#ifdef IPVT_FENTRY_LOOKUP_RET
int on_lookup_ret(__u64 *ctx)
{
	return do_lookup_ret(ctx, 0, (void *)ctx[4]);
}
#else
int on_lookup_ret(struct pt_regs *ctx)
{
	return do_lookup_ret(ctx, 1, (void *)PT_REGS_RC(ctx));
}
#endif

/* ---- vmlinux helpers: one body, a kprobe or an fentry ------------- *
 * Where the kernel has trampolines for them (probes.py: vmlinux BTF, x86-64,
 * not PREEMPT_RT), the helpers in vmlinux are attached by fentry/fexit: the
 * attach cost every packet of the node pays on __dev_queue_xmit and
 * ip_local_out, ipvlan's or not, is about half a kprobe's. Such a program's
 * arguments come as an array (ctx[i]; an fexit's return after them), and it
 * cannot tail-call the kprobes' on_worker_hit (another program type), so
 * its worker hits are sent inline (tail 0). IPVT_FENTRY_<PROBE> selects it;
 * bcc names the traced function after the kfunc__/kretfunc__ prefix. */
static __always_inline int do_fwd(void *ctx, int tail, struct net_device *dev,
				  struct sk_buff *skb)
{
	kprobe_ran(IPVT_P_FWD, tail);
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct ipvt_hit *h = hit_begin(IPVT_P_FWD, tail, &r, &w);
	if (!h)
		return 0;
	if (w) {
		if (head_filtered(skb_head(skb)))
			return 0;
		/* reported: its return will be too (see do_fwd_ret) */
		__u64 key = task_cpu_key();
		fwd_ctx.update(&key, &w);
	}
	FILL_DEV(h, dev);
	FILL_SKB(h, skb);
	hit_end(ctx, tail, IPVT_P_FWD, h, r, w);
	return 0;
}

static __always_inline int do_fwd_ret(void *ctx, int tail, int ret)
{
	kprobe_ran(IPVT_P_FWD_RET, tail);
	/* Inside a context, dev_forward_skb returns in the context it was
	 * called from, and nothing opens one inside it: both callers hold BH
	 * off (a softirq cannot nest; a hard interrupt does not enter ipvlan),
	 * and on PREEMPT_RT a preempting task has its own stack. So the
	 * innermost open context is the call's, as the count build has always
	 * taken it, without a hash update, lookup and delete per delivery. In
	 * the multicast worker a delivery the filter rejected was not reported,
	 * and neither is its return: only a reported one left its key. */
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct ipvt_hit *h = hit_begin(IPVT_P_FWD_RET, tail, &r, &w);
	if (!h)
		return 0;
	if (w) {
		__u64 key = task_cpu_key();
		if (!fwd_ctx.lookup(&key))
			return 0;
		fwd_ctx.delete(&key);
	}
	h->ret = ret;
	hit_end(ctx, tail, IPVT_P_FWD_RET, h, r, w);
	return 0;
}

/* dev_forward_skb(dev, skb) */
#ifdef IPVT_FENTRY_FWD
int kfunc__dev_forward_skb(__u64 *ctx)
{
	return do_fwd(ctx, 0, (struct net_device *)ctx[0], (struct sk_buff *)ctx[1]);
}
#else
int on_fwd(struct pt_regs *ctx)
{
	return do_fwd(ctx, 1, (struct net_device *)PT_REGS_PARM1(ctx),
		      (struct sk_buff *)PT_REGS_PARM2(ctx));
}
#endif

#ifdef IPVT_FENTRY_FWD_RET
int kretfunc__dev_forward_skb(__u64 *ctx)
{
	return do_fwd_ret(ctx, 0, (int)ctx[2]);
}
#else
int on_fwd_ret(struct pt_regs *ctx)
{
	return do_fwd_ret(ctx, 1, (int)PT_REGS_RC(ctx));
}
#endif

/* A helper that names an skb and the device it goes to. worker_only: a
 * hit outside the multicast worker is not this probe's (netif_rx). */
static __always_inline int report_skb_dev(void *ctx, int tail, __u16 probe,
					  struct sk_buff *skb, int use_dst, int worker_only)
{
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct ipvt_hit *h = hit_begin(probe, tail, &r, &w);
	if (!h || (worker_only && !w))
		return 0;
	if (w && head_filtered(skb_head(skb)))
		return 0;
	struct net_device *dev = 0;
	if (use_dst) {
		unsigned long refdst = 0;
		KREAD(refdst, skb, IPVT_OFF_SKB_REFDST);
		struct dst_entry *dst = (struct dst_entry *)(refdst & ~1UL);
		if (dst)
			KREAD(dev, dst, IPVT_OFF_DST_DEV);
	}
	if (!dev)
		KREAD(dev, skb, IPVT_OFF_SKB_DEV);
	FILL_DEV(h, dev);
	FILL_SKB(h, skb);
	hit_end(ctx, tail, probe, h, r, w);
	return 0;
}

/* The helpers that only name an skb and its device: a kprobe (PARM: the
 * skb's PT_REGS_PARMn) or, with IPVT_FENTRY_<PROBE>, an fentry on FN (ARG:
 * the skb's index in the argument array). */
#define SKB_DEV_KPROBE(name, probe, parm, use_dst)					\
int name(struct pt_regs *ctx)								\
{											\
	ran(probe);									\
	return report_skb_dev(ctx, 1, probe, (struct sk_buff *)parm(ctx), use_dst, 0);	\
}
#define SKB_DEV_FENTRY(fn, probe, arg, use_dst)						\
int kfunc__##fn(__u64 *ctx)								\
{											\
	return report_skb_dev(ctx, 0, probe, (struct sk_buff *)ctx[arg], use_dst, 0);	\
}

/* __dev_queue_xmit(skb, sb_dev) */
#ifdef IPVT_FENTRY_QXMIT
SKB_DEV_FENTRY(__dev_queue_xmit, IPVT_P_QXMIT, 0, 0)
#else
SKB_DEV_KPROBE(on_qxmit, IPVT_P_QXMIT, PT_REGS_PARM1, 0)
#endif

/* ip_local_out(net, sk, skb) and ip6_local_out: the dst was set by
 * ipvlan's route lookup */
#ifdef IPVT_FENTRY_LOCAL_OUT
SKB_DEV_FENTRY(ip_local_out, IPVT_P_LOCAL_OUT, 2, 1)
#else
SKB_DEV_KPROBE(on_local_out, IPVT_P_LOCAL_OUT, PT_REGS_PARM3, 1)
#endif
#ifdef IPVT_FENTRY_LOCAL_OUT6
SKB_DEV_FENTRY(ip6_local_out, IPVT_P_LOCAL_OUT6, 2, 1)
#else
SKB_DEV_KPROBE(on_local_out6, IPVT_P_LOCAL_OUT6, PT_REGS_PARM3, 1)
#endif

/* netif_rx(skb): a delivery only from the multicast worker, outside any
 * context. An fentry where it can be (probes.py: a task calls it with
 * softirqs enabled, as the worker's entry is run) */
#ifdef IPVT_FENTRY_NETIF_RX
int kfunc__netif_rx(__u64 *ctx)
{
	return report_skb_dev(ctx, 0, IPVT_P_NETIF_RX, (struct sk_buff *)ctx[0], 0, 1);
}
#else
int on_netif_rx(struct pt_regs *ctx)
{
	ran(IPVT_P_NETIF_RX);
	return report_skb_dev(ctx, 1, IPVT_P_NETIF_RX, (struct sk_buff *)PT_REGS_PARM1(ctx), 0, 1);
}
#endif

/* ipvlan_multicast_enqueue(port, skb, tx_pkt) */
int on_mc_enqueue(struct pt_regs *ctx)
{
	ran(IPVT_P_MC_ENQUEUE);
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
	struct ipvt_hit *h = hit_begin(IPVT_P_MC_ENQUEUE, 1, &r, &w);
	if (!h) {
		/* inside a rejected packet's context: the worker's run of
		 * this frame is not reported either */
		if (in_filtered_ctx())
			filter_out_head(skb_head(skb));
		return 0;
	}
	struct net_device *dev = 0;
	KREAD(dev, skb, IPVT_OFF_SKB_DEV);
	if (PT_REGS_PARM3(ctx) & 0xff)
		h->flags |= IPVT_F_LOCAL;   /* tx_pkt */
	FILL_DEV(h, dev);
	FILL_SKB(h, skb);
	hit_end(ctx, 1, IPVT_P_MC_ENQUEUE, h, r, w);
	return 0;
}

static __always_inline int report_free(__u16 probe, void *skbaddr, void *location,
				       __u32 reason)
{
	struct ipvt_rec *r = 0;
	__u64 w = 0;
	struct ipvt_hit *h = hit_begin(probe, 0, &r, &w);
	if (!h)
		return 0;
	/* the worker freeing the original of a frame the filter rejected
	 * (the tracepoint fires before the skb is freed: its head is there) */
	if (w && head_filtered(skb_head((struct sk_buff *)skbaddr)))
		return 0;
	h->skb = (__u64)skbaddr;
	h->aux = (__u64)location;
	h->reason = reason;
	hit_end(0, 0, probe, h, r, w);
	note_site((__u64)location);
	return 0;
}

/* ---- L3S: after the rx_handler passed the frame ------------------- */
#define L3S_PHASE_RCV (1ULL << 62)
#define L3S_PHASE_NF (2ULL << 62)
#define L3S_ID_MASK ((1ULL << 62) - 1)

/* ipvlan_l3_rcv(dev, skb, proto): dev is the L3S parent */
int on_l3_rcv(struct pt_regs *ctx)
{
	ran(IPVT_P_L3_RCV);
	struct net_device *dev = (struct net_device *)PT_REGS_PARM1(ctx);
	struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
	if (!is_armed() || head_filtered(skb_head(skb)))
		return 0;
	__u64 key = (__u64)skb;
	__u64 id = new_ctx_id() & L3S_ID_MASK;
	__u64 val = id | L3S_PHASE_RCV;
	l3s_skbs.update(&key, &val);
	return emit_dev_skb(IPVT_P_L3_RCV, id, 0, 0, dev, skb);
}

/* ipvlan_nf_input(priv, skb, state) on 6.1/6.12: a LOCAL_IN hook of the
 * whole netns; only frames l3_rcv saw are reported. */
int on_nf_input(struct pt_regs *ctx)
{
	ran(IPVT_P_NF_INPUT);
	struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
	__u64 key = (__u64)skb;
	__u64 *val = l3s_skbs.lookup(&key);
	if (!val)
		return 0;
	__u64 id = *val & L3S_ID_MASK;
	__u64 nval = id | L3S_PHASE_NF;
	l3s_skbs.update(&key, &nval);
	struct net_device *dev = 0;
	KREAD(dev, skb, IPVT_OFF_SKB_DEV);
	return emit_dev_skb(IPVT_P_NF_INPUT, id, 0, 0, dev, skb);
}

/* ipvlan_skb_to_addr(skb, dev), called by both hooks above */
int on_s2a(struct pt_regs *ctx)
{
	ran(IPVT_P_S2A);
	__u64 key = PT_REGS_PARM1(ctx);
	__u64 *val = l3s_skbs.lookup(&key);
	__u64 *slot = s2a_slot(1);
	if (!slot)
		return 0;
	*slot = 0;
	if (val) {
		*slot = *val;
		if ((*val & ~L3S_ID_MASK) == L3S_PHASE_NF)
			l3s_skbs.delete(&key);
	}
	return 0;
}

int on_s2a_ret(struct pt_regs *ctx)
{
	ran(IPVT_P_S2A_RET);
	__u64 *slot = s2a_slot(0);
	if (!slot || !*slot)
		return 0;
	__u64 id = *slot & L3S_ID_MASK;
	*slot = 0;
	void *addr = (void *)PT_REGS_RC(ctx);
	struct ipvt_event *e = ev_init(IPVT_P_S2A_RET, id, 0);
	if (!e)
		return 0;
	FILL_OWNER(e, addr);
	ev_submit(IPVT_P_S2A_RET, e);
	return 0;
}

/* skb:kfree_skb(skb, location, reason[, rx_sk]) and skb:consume_skb(skb
 * [, location]), attached raw: the arguments as the kernel passes them. A
 * regular tracepoint first copies them into a trace record for every free
 * on the node; the frees of every other packet pay for that too. An
 * argument the tracepoint does not have must not be read (the attach
 * refuses a program that reads beyond them): the fields the format file
 * shows decide (probes.py). */
#ifndef IPVT_TP_FREES
int on_kfree(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef IPVT_HAVE_DROP_REASON
	return report_free(IPVT_P_KFREE, (void *)ctx->args[0], (void *)ctx->args[1],
			   (__u32)ctx->args[2]);
#else
	return report_free(IPVT_P_KFREE, (void *)ctx->args[0], (void *)ctx->args[1], 0);
#endif
}

int on_consume(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef IPVT_HAVE_CONSUME_LOCATION
	return report_free(IPVT_P_CONSUME, (void *)ctx->args[0], (void *)ctx->args[1], 0);
#else
	return report_free(IPVT_P_CONSUME, (void *)ctx->args[0], 0, 0);
#endif
}
#else
/* With IPVT_TP_FREES, where a raw tracepoint's program can be preempted
 * (PREEMPT_RT from 6.13, probes.py): the classic tracepoints, whose
 * programs perf's handler runs with preemption off, so that another task's
 * free on this CPU never finds the program running (and is never skipped
 * for it). They read the trace record the kernel filled, at the offsets of
 * its format file (IPVT_TP_<EVENT>_<FIELD>). */
int on_kfree(void *ctx)
{
#ifdef IPVT_TP_KFREE_SKB_SKBADDR   /* (without it, not attached: probes.py) */
	void *skb = 0, *location = 0;
	__u32 reason = 0;
	KREAD(skb, ctx, IPVT_TP_KFREE_SKB_SKBADDR);
	KREAD(location, ctx, IPVT_TP_KFREE_SKB_LOCATION);
#ifdef IPVT_TP_KFREE_SKB_REASON
	KREAD(reason, ctx, IPVT_TP_KFREE_SKB_REASON);
#endif
	return report_free(IPVT_P_KFREE, skb, location, reason);
#else
	return 0;
#endif
}

int on_consume(void *ctx)
{
#ifdef IPVT_TP_CONSUME_SKB_SKBADDR
	void *skb = 0, *location = 0;
	KREAD(skb, ctx, IPVT_TP_CONSUME_SKB_SKBADDR);
	KREAD(location, ctx, IPVT_TP_CONSUME_SKB_LOCATION);
	return report_free(IPVT_P_CONSUME, skb, location, 0);
#else
	return 0;
#endif
}
#endif
