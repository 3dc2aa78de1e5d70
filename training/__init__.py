"""Training side of vlkd: the vision-language teacher, distillation and export.

Nothing here is imported by the service; it needs the ``train`` extras (torch).
"""
