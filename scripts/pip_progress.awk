# pip's install output folded into one progress line per phase, for `make` (errors still printed in full).
/^Collecting / { n++; printf "\r[venv] resolving: %d packages (%s)            ", n, $2; fflush() }
/^Installing collected packages/ { printf "\n[venv] installing %d packages (torch alone is ~2 GB: the longest part)...\n", n; fflush() }
/^Successfully installed/ { print "[venv] installed" }
/ERROR|[Ee]rror:/ { print }
