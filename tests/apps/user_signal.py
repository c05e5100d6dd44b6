"""An application with a signal handler of its own, as some install (to reopen a log file,
dump stacks, ...): SIGUSR1, set at import, which the CLI does on the main thread, the
only one Python lets set handlers and runs them on. `GET` answers how many times the
handler has run. Served as `tests.apps.user_signal:app`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import List, Optional

from tests.apps.common import Environ, StartResponse, text_response

handled = 0


def _on_usr1(signum: int, frame: Optional[FrameType]) -> None:
    global handled
    handled += 1


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGUSR1, _on_usr1)


def app(environ: Environ, start_response: StartResponse) -> List[bytes]:
    return text_response(start_response, str(handled).encode())
