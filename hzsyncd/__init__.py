"""hzsyncd: report dropped JSON files to the national SME ReportService, exactly once."""

__version__ = "0.1.0"
