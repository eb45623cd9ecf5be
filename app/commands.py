"""The command palette's own entries: title, help text and the app action each one runs."""

from __future__ import annotations

COMMANDS = [
    ("New chat", "Start a new conversation", "new_chat"),
    ("Switch model", "Load a downloaded or recent model, or a GGUF file (Ctrl+L)", "switch_model"),
    ("Toggle thinking", "Open or close the reasoning of the last reply (Ctrl+T)", "toggle_thinking"),
    ("Hide all reasoning", "Hide or show every Thinking section", "toggle_all_reasoning"),
    ("Toggle chat list", "Show or hide the conversation sidebar", "toggle_sidebar"),
    ("Rename chat", "Rename this conversation", "rename"),
    ("Delete chat", "Delete this conversation", "delete"),
    ("Export chat", "Save this conversation as Markdown (Ctrl+E)", "export"),
    ("Copy reply", "Copy the last reply (Ctrl+Y)", "copy_reply"),
    ("Copy code block", "Copy the last code block of the last reply", "copy_code"),
    ("Attach file", "Attach a text file to the next prompt (Ctrl+O)", "attach"),
    ("Remove attachment", "Drop the attached file", "remove_attachment"),
    ("Cancel reply", "Stop the running generation", "cancel"),
]
