"""``python -m peft_shine.cli``: the ``shine`` command."""

import sys

from peft_shine.cli.main import main


sys.exit(main())
