"""Capture: what comes from the running kernel and the node.

The probe plan for this kernel, bcc (compile, attach, ring buffer), kernel
symbols and drop reasons, the netlink snapshot of namespaces and devices, and
the self-checks that compare the BPF side with the model. Imports the model.
"""
