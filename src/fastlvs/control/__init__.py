"""The control plane: the service model (model.py), ipvsadm's command language (ipvsadm.py),
the rules-file and TOML formats (rules.py, config.py), `ipvsadm -L` text (listing.py), the
Director that is the engine's only client (director.py), and the control socket: its wire
schema (ctl.py, shared with `fastlvs admin`) and its server (server.py).
"""
