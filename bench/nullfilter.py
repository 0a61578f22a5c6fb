"""The null Python filter: what any pipe filter written in Python costs before it checks anything.

It takes the same arguments as ``scatterguard filter`` (after the path of the sendmail to use),
reads the message from stdin and re-injects it unchanged, as scatterguard does:
``SENDMAIL -G -i -f SENDER -- RECIPIENT...`` with the message on its stdin.

usage: nullfilter.py SENDMAIL --sender=ADDR [--other-option=...] -- RECIPIENT...
"""

import subprocess
import sys


def main(argv: list[str]) -> int:
    sendmail, rest = argv[0], argv[1:]
    sender = ""
    for index, arg in enumerate(rest):
        if arg.startswith("--sender="):
            sender = arg.partition("=")[2]
        elif arg == "--":
            recipients = rest[index + 1 :]
            break
    else:
        return 75
    data = sys.stdin.buffer.read()
    done = subprocess.run(
        [sendmail, "-G", "-i", "-f", sender or "<>", "--", *recipients], input=data, check=False
    )
    return 0 if done.returncode == 0 else 75


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
