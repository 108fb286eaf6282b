import sys

from finetuner.cli import main

sys.exit(main())
