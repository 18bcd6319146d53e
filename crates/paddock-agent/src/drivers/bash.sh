# paddock's bash driver: hosts one code context. An interactive bash
# (--noprofile --norc --noediting -i) reads this from its stdin, a socket,
# line by line; crates/paddock-agent/src/interp.rs documents the protocol.
# Afterwards the agent sends, on stdin, one line per request:
#   \__paddock_begin N; \builtin eval "$__paddock_code" </dev/null 3>&-
#   \__paddock_complete N
# and the code itself, NUL-terminated, on the control socket (fd 3).
# Interactive, because only an interactive shell abandons the whole command
# line on SIGINT (status 130) and keeps going. The eval runs at top level, so
# variables (declare included), functions, cd, traps and options persist.
# `3>&-` hides the control socket from the cell (bash keeps its saved copy
# close-on-exec, so programs the cell starts do not inherit it either).
PS1='' PS2='' PS0='' PS4='+ '
set +o history +H
unset HISTFILE MAILCHECK
__paddock_last=0 __paddock_id=
# Reads the code of run N, acknowledges it, and restores the previous $?.
__paddock_begin() {
  __paddock_id=$1
  IFS= builtin read -r -d '' __paddock_code <&3 || builtin exit 0
  builtin printf 'S %s\n' "$1" >&3
  builtin return "$__paddock_last"
}
# PROMPT_COMMAND: runs after every command line, also an interrupted one.
__paddock_reply() {
  __paddock_last=$?
  if [[ -n ${__paddock_id-} ]]; then
    builtin printf 'R %s %s\n' "$__paddock_id" "$__paddock_last" >&3
    __paddock_id=
  fi
}
# Answers whether the code (read from fd 3) is a complete command: bash -n
# in a child, with its messages in the C locale.
__paddock_complete() {
  IFS= builtin read -r -d '' __paddock_code <&3 || builtin exit 0
  __paddock_check=$(builtin printf '%s\n' "$__paddock_code" |
    BASH_ENV='' LC_ALL=C "$BASH" --noprofile --norc -n 2>&1 3>&-)
  if [[ $? -ne 0 ]]; then
    case $__paddock_check in
      *'unexpected end of file'* | *'unexpected EOF'*) __paddock_check=incomplete ;;
      *) __paddock_check=invalid ;;
    esac
  elif [[ $__paddock_check == *'delimited by end-of-file'* ]]; then
    __paddock_check=incomplete
  else
    __paddock_check=complete
  fi
  builtin printf 'C %s %s\n' "$1" "$__paddock_check" >&3
  __paddock_code= __paddock_check=
  builtin return "$__paddock_last"
}
PROMPT_COMMAND=__paddock_reply
readonly -f __paddock_begin __paddock_reply __paddock_complete
readonly PROMPT_COMMAND
builtin printf 'H\n' >&3
