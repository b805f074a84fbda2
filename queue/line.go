package queue

// line is the in-process line: tickets in the order they joined, with O(1)
// append and removal of the front, O(log n) removal from anywhere and
// O(log n) place in line.
//
// Tickets sit in a slice in joining order. A ticket that leaves from the
// middle is not moved; it is counted in a Fenwick tree of departures over
// slice indexes, so a ticket's place is its distance from the front minus
// the departures in between. The slice is compacted when more than half of
// it is the popped front or departed tickets, which keeps every operation
// amortized at the costs above and memory proportional to the live line.
type line struct {
	items []*entry
	head  int   // index of the first slot not yet popped
	gone  []int // Fenwick tree (1-based) of departures by slice index
	nGone int   // departures at or after head
}

// push appends e at the back.
func (l *line) push(e *entry) {
	e.idx = len(l.items)
	l.items = append(l.items, e)
	// The new node covers (i-lowbit(i), i]; its own slot is live, so its
	// value is the departures already in the rest of that range.
	i := len(l.items)
	l.gone = append(l.gone, l.prefix(i-1)-l.prefix(i-(i&-i)))
}

// prefix returns the departures in slots [0, i).
func (l *line) prefix(i int) int {
	n := 0
	for ; i > 0; i -= i & -i {
		n += l.gone[i-1]
	}
	return n
}

// remove takes e out of the line wherever it is. e must be in the line.
func (l *line) remove(e *entry) {
	if e.idx == l.head {
		l.items[l.head] = nil
		l.head++
		l.skip()
		l.maybeCompact()
		return
	}
	l.items[e.idx] = nil
	for i := e.idx + 1; i <= len(l.gone); i += i & -i {
		l.gone[i-1]++
	}
	l.nGone++
	l.maybeCompact()
}

// skip moves head past departed slots.
func (l *line) skip() {
	for l.head < len(l.items) && l.items[l.head] == nil {
		l.head++
		l.nGone--
	}
}

// front returns the first ticket in line, or nil.
func (l *line) front() *entry {
	if l.head < len(l.items) {
		return l.items[l.head]
	}
	return nil
}

// len returns the number of tickets in line.
func (l *line) len() int { return len(l.items) - l.head - l.nGone }

// position returns e's place: 1 for the front.
func (l *line) position(e *entry) int {
	return e.idx - l.head - (l.prefix(e.idx) - l.prefix(l.head)) + 1
}

// each calls f for every ticket in line, front first, until f returns
// false. f must not change the line.
func (l *line) each(f func(*entry) bool) {
	for _, e := range l.items[l.head:] {
		if e != nil && !f(e) {
			return
		}
	}
}

// maybeCompact rebuilds the slice without dead slots once they are more
// than half of it.
func (l *line) maybeCompact() {
	dead := l.head + l.nGone
	if dead < 64 || dead*2 < len(l.items) {
		return
	}
	live := make([]*entry, 0, max(l.len()*2, 16))
	for _, e := range l.items[l.head:] {
		if e != nil {
			e.idx = len(live)
			live = append(live, e)
		}
	}
	l.items = live
	l.head = 0
	l.nGone = 0
	// No departures remain, so every node of the tree is zero.
	l.gone = make([]int, len(live), cap(live))
}
