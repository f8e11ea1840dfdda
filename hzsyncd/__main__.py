"""`python -m hzsyncd`: the same as the `hzsyncd` command."""

from hzsyncd.cli import main

main()
