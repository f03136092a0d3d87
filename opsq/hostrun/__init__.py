"""Running on one host: the runner interface with its SSH and local implementations
(``runner``, ``ssh``, ``local``), the programs opsq sends for put, get, script and become
(``programs``), trusting host keys (``hostkeys``), and stopping a run from another thread
(``stopper``). Nothing here reads or writes the database."""
