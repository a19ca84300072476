"""fastctc.score.errors: the scoring tool's exceptions and exit statuses.

Kept in a module of their own so that every other part of the tool (manifest, emissions,
sinks, driver) imports them from here and none imports another only for its errors.
"""
from __future__ import annotations

EXIT_OK = 0            # every item scored
EXIT_ITEMS_FAILED = 1  # the run finished; some rows carry `error`
EXIT_USAGE = 2         # nothing scored by this run: bad option, input, OUT unusable or locked
EXIT_OUTPUT = 3        # writing OUT failed mid-run (disk full, I/O error); rows written stay
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); rerun the same command to resume


class UsageError(Exception):
    """A problem with the command as a whole (exit status 2, EXIT_USAGE).

    A bad option, an unreadable manifest or vocab, an unusable or locked OUT; raised
    before the run scores anything.  Per-item problems never raise this.
    """


class OutputError(Exception):
    """Writing OUT failed after scoring began (exit status 3, EXIT_OUTPUT).

    Every row written before the failure is complete in OUT, so a rerun after the cause is
    fixed resumes.
    """


class ItemError(Exception):
    """A problem with one item: it becomes a row whose ``error`` column holds the message.

    ``frames`` / ``tokens`` may carry what was learnt before the problem.

    Parameters
    ----------
    message : str
        Why the item could not be scored.
    frames : int or None, default None
        The item's frame count, when known.
    tokens : int or None, default None
        The transcript's length in tokens, when known.
    """

    def __init__(self, message, frames=None, tokens=None):
        super().__init__(message)
        self.frames = frames
        self.tokens = tokens


def os_cause(e: OSError) -> str:
    """The short cause of an OSError ("No space left on device"), without the path."""
    return e.strerror or str(e) or type(e).__name__
