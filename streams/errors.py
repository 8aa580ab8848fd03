"""The command line's error kinds and exit codes (README "Exit codes"; ``driftwarden --help``).

A command raises one of these (or :class:`streams.config.ConfigError`,
:class:`streams.broker.BrokerError`) with a message that names the flag, key
or file at fault and says what to do; :func:`streams.cli.main` prints it on
one line and exits with the code of its kind. Tracebacks are for bugs.
"""

from __future__ import annotations

from typing import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
"""The command started and then failed (the log says why)."""
EXIT_USAGE = 2
"""A wrong flag, a missing input file, an invalid configuration (argparse uses 2 for usage errors too)."""
EXIT_UNREACHABLE = 3
"""A service the command needs (Kafka) did not answer in time."""
EXIT_NO_VALID_INPUT = 4
"""The input was read, but none of it was usable (every line rejected, or none at all)."""


class UsageError(ValueError):
    """A flag's value does not fit the data or the file system (exit 2); the message names the flag."""


class NoValidInput(ValueError):
    """The command read its input and found nothing usable in it (exit 4)."""


EXIT_CODES_HELP = """\
exit codes:
  0  done (for a service: stopped by Ctrl-C/SIGTERM)
  1  failed while running (a worker whose output the broker refused; a demo child that died): see the log
  2  usage or configuration error: a flag, a missing file, a config key (the message names it)
  3  a service is unreachable: Kafka did not accept a connection within kafka.connect_timeout_seconds
  4  no valid input: every input line was rejected, or there was none
"""

__all__: Sequence[str] = ("EXIT_CODES_HELP", "EXIT_FAILED", "EXIT_NO_VALID_INPUT", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE",
                          "NoValidInput", "UsageError")
