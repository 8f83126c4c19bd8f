"""The Textual operator console (imported only by the commands that open it)."""
