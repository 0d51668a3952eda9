"""``python -m services.routing [serve|migrate|import-directory FILE|import-postcodes FILE [--stand DATE]]``."""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from services.routing import importer
from services.routing.app import MIGRATIONS, build
from services.routing.gv100ad import MalformedDirectory
from services.routing.settings import Settings
from shared import db
from shared.runtime import main


def _with_database(run: Callable[[Engine], importer.ImportResult]) -> int:
    settings = Settings()
    engine = db.make_engine(settings.database_url)
    try:
        db.migrate(engine, MIGRATIONS, settings.service_name)
        started = time.monotonic()
        try:
            result = run(engine)
        except (MalformedDirectory, importer.MalformedPostcodes) as exc:
            print(f"nothing imported: {exc}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as exc:
            print(f"nothing imported: {exc}", file=sys.stderr)
            return 1
        print(f"{result.message()} in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        engine.dispose()


def import_directory(args: list[str]) -> int:
    """Import the official Destatis GV100AD file (fixed-width)."""
    parser = argparse.ArgumentParser(prog="python -m services.routing import-directory",
                                     description=import_directory.__doc__)
    parser.add_argument("file", type=Path, help="GV100AD_<DDMMYYYY>.txt")
    options = parser.parse_args(args)
    return _with_database(lambda engine: importer.import_directory(engine, options.file))


def import_postcodes(args: list[str]) -> int:
    """Import the PLZ table (CSV: osm_id,ags,ort,plz,landkreis,bundesland)."""
    parser = argparse.ArgumentParser(prog="python -m services.routing import-postcodes",
                                     description=import_postcodes.__doc__)
    parser.add_argument("file", type=Path, help="zuordnung_plz_ort.csv")
    parser.add_argument("--stand", help="the table's date, YYYY-MM-DD (default: the date in the file name)")
    options = parser.parse_args(args)
    stand = options.stand.replace("-", "") if options.stand else None
    return _with_database(lambda engine: importer.import_postcodes(engine, options.file, stand))


if __name__ == "__main__":
    sys.exit(main(build, sys.argv[1:], settings=Settings, migrations=MIGRATIONS,
                  extra={"import-directory": import_directory, "import-postcodes": import_postcodes}))
