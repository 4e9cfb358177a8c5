"""Human-facing run reports built from the blackboard (reads artifacts, never trains anything)."""

from crowdforge.reporting.html_report import REPORT_FILE, build_report

__all__ = ["REPORT_FILE", "build_report"]
