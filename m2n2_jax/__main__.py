import sys

from m2n2_jax.cli import main

sys.exit(main())
