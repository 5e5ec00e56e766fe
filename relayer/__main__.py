"""`python -m relayer` and the zipapp entry point."""

from relayer.cli import main

main()
