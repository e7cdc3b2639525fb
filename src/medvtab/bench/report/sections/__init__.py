"""The report's sections, one module per table or figure of the papers (or a few close ones); each builds a
:class:`medvtab.bench.report.tables.Section` from a :class:`medvtab.bench.report.load.Bench`."""
