"""HTTP routes: ``classify`` (the ``/v1`` API), ``model_card``, ``probes``."""
