"""Notify: tells the applicant what happened to their case, on the channel they chose."""
