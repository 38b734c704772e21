"""
Packaging for llamaswap.

Two things need more than setup.cfg can say:

 - C{twisted/plugins/llamaswap_plugin.py} is shipped as a module of the
   C{twisted.plugins} namespace (there is deliberately no C{__init__.py} in
   C{twisted/} or C{twisted/plugins/}), so it is listed explicitly.
 - The top-level C{static/} (web UI) and C{config/} (example configs, among
   them the bundled demo config served when twistd is given no C{-c}) are
   mapped into the installed package as C{llamaswap.static} and
   C{llamaswap.configs}, so they are found after a regular (non-editable)
   install.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["llamaswap", "llamaswap.*"])
packages += ["twisted.plugins", "llamaswap.static", "llamaswap.configs"]

setup(
    packages=packages,
    package_dir={
        "llamaswap.static": "static",
        "llamaswap.configs": "config",
    },
)
