"""The client commands: pac submit, pac status, pac jobs, pac cancel."""
