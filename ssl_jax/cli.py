"""What the console scripts (`ssl-jax`, `ssl-jax-prepare`) share."""

from __future__ import annotations

import sys

from absl import flags


def help_lists_flags(module_name: str) -> None:
    """Makes `--help` list the flags of `module_name`. absl's `--help` shows
    the key flags of the program's main module, which it knows by
    `sys.argv[0]`: for `python -m ssl_jax.main` that is the module itself, but
    for a console script it is the launcher pip wrote, which defines no
    flags, so `--help` listed none. Declaring the module's flags key flags of
    `sys.argv[0]` too shows them either way; the launcher's missing
    docstring (the usage text above the flags) becomes the module's."""
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    launcher = sys.modules.get("__main__")
    if launcher is not None and not launcher.__doc__:
        launcher.__doc__ = sys.modules[module_name].__doc__
