"""The model: what a recording means, with no kernel, netlink or file in it.

Record layout (parsed from bpf/ipvtrace.h), events, packets (correlate),
Evidence, the classifier and its catalogue, the topology of devices and
ports, filters. Everything else imports this; this imports nothing of
ipvtrace's outside it.
"""
