"""The engine: the data plane in one Cython extension (`_core.pyx`, with `dataplane/*.pxi` and
the `.pxd` declarations under `includes/`) and the XDP steering program (`bpf/`).

Only the director (control/director.py), the process that feeds it rings (daemon.py) and the
replay import the extension; importing this package alone loads nothing compiled.
"""
