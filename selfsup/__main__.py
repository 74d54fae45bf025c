from selfsup.cli import run

run()
