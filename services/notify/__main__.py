"""``python -m services.notify [serve|migrate]``."""

import sys

from services.notify.app import MIGRATIONS, build
from services.notify.settings import Settings
from shared.runtime import main

if __name__ == "__main__":
    sys.exit(main(build, sys.argv[1:], settings=Settings, migrations=MIGRATIONS))
