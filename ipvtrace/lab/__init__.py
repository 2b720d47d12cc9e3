"""The lab: namespaces and ipvlan ports to trace (netlab), the article's
scenarios, and Debian kernels booted in QEMU (vm). Used by `ipvtrace lab`,
the benchmarks and the tests; not by live, record, replay or stats.
"""
