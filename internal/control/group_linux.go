package control

import (
	"os"
	"sort"
	"strconv"
	"strings"
)

// inGroup tells whether the process pid has gid as its primary or a
// supplementary group. SO_PEERCRED carries only the primary group.
func inGroup(pid int, primary uint32, gid int) bool {
	if int(primary) == gid {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, f := range strings.Fields(rest) {
				if f == strconv.Itoa(gid) {
					return true
				}
			}
		}
	}
	return false
}

func sortStrings(s []string) { sort.Strings(s) }
