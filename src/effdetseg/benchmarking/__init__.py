"""What ``effdetseg benchmark`` measures: zoo models (and smp's) side by side (``model_table``),
exported files against the eager network (``exported_files``), one network in every backend
(``backend_table``). Every figure is timed by :mod:`effdetseg.inference.timing`.
"""
