"""`python -m ray_grok.cli`: the `ray-grok` command without its console script."""
from . import main

main()
