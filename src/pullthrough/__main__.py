from pullthrough.cli import entry

entry()
