"""One exception type for mistakes a user can fix; entry scripts turn it into one line + exit 2."""


class UserError(Exception):
    """Bad input (file, flag, model) described in one line that names what and where."""
