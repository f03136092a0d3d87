"""Development tools kept out of the ``opsq`` package (and out of its wheel).

* ``devfleet``: a local fleet of real ``sshd`` hosts on loopback, for the demo and the tests
  (it creates a system user and a sudo rule: never on a production machine).
* ``demo``: ``make demo``'s one real job across that fleet.
* ``examples``: an example business task; workers load it only when
  ``OPSQ_TASK_MODULES`` lists ``devtools.examples``.

Importable from the repository root: the Makefile runs there with it on PYTHONPATH, and
pytest puts the root on ``sys.path``.
"""
