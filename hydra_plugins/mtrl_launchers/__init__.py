"""mtrl's Hydra launchers (``configs/hydra/launcher/``); see :mod:`.mtrl_launchers`."""
