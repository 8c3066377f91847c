"""The results of a sweep, from files alone: the trials and curves tables, phases and figures."""
