# Shell quoting shared by the launchers (sourced, not run).
# Quote one word for a POSIX shell: bare when it holds only safe characters, otherwise in single
# quotes (a ' inside becomes '\''). Printed commands can be pasted back into a shell, and a
# remote command string survives the worker's shell unchanged. Result in REPLY.
shq() {
  local s=$1 q="'\\''" t
  if [[ $s =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then REPLY=$s; return; fi
  t=${s//\'/$q}
  REPLY="'$t'"
}
# A command line from words; `--flag=value` keeps the flag bare and quotes only the value.
shjoin() {
  local out="" w
  for w in "$@"; do
    if [[ $w =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
      local flag=${BASH_REMATCH[1]}
      shq "${BASH_REMATCH[2]}"; REPLY="$flag$REPLY"
    else
      shq "$w"
    fi
    out+="${out:+ }$REPLY"
  done
  REPLY=$out
}
