package degrade

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// decodeState reads a state as the admin API does: strictly, one JSON
// value, no unknown fields.
func decodeState(data []byte) (State, bool) {
	var st State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil || dec.More() {
		return State{}, false
	}
	return st, true
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %+v: %v", v, err)
	}
	return string(b)
}

// refValidState restates the documented rules for a state (see [State],
// [Rule] and [Condition]) without the package's code: a mode, a
// percentage in range, rules with conditions, each with an attribute, an
// operator and the values it needs, and every string UTF-8.
func refValidState(st State) bool {
	switch st.Mode {
	case On, Off:
	case Percent:
		if !(st.Percent >= 0 && st.Percent <= 100) {
			return false
		}
	default:
		return false
	}
	for k, m := range st.Messages {
		if !utf8.ValidString(k) || !utf8.ValidString(m) {
			return false
		}
	}
	for _, r := range st.Rules {
		if len(r.When) == 0 {
			return false
		}
		for _, c := range r.When {
			if c.Attr == "" || !utf8.ValidString(c.Attr) {
				return false
			}
			for _, v := range c.Values {
				if !utf8.ValidString(v) {
					return false
				}
			}
			switch c.Op {
			case "in", "not_in":
				if len(c.Values) == 0 {
					return false
				}
			case "lt", "le", "gt", "ge":
				if len(c.Values) != 1 {
					return false
				}
				if _, ok := refParseVersion(c.Values[0]); !ok {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}

// refAttr returns the attribute a condition names, as documented.
func refAttr(a *Attributes, name string) string {
	switch name {
	case "platform":
		return a.Platform
	case "model":
		return a.Model
	case "app_version":
		return a.AppVersion
	case "region":
		return a.Region
	case "user":
		return a.UserID
	case "locale":
		return a.Locale
	}
	return a.Custom[name]
}

// refEnabled decides st for a request with attributes a (nil: none in
// the context) as the documentation says, and reports whether it can: a
// percentage strictly between 0 and 100 depends on the user's hash, which
// only the switchboard knows.
func refEnabled(st State, a *Attributes) (on, known bool) {
	for _, r := range st.Rules {
		match := true
		for _, c := range r.When {
			v := ""
			if a != nil {
				v = refAttr(a, c.Attr)
			}
			var holds bool
			switch c.Op {
			case "in":
				holds = v != "" && slices.Contains(c.Values, v)
			case "not_in":
				holds = v == "" || !slices.Contains(c.Values, v)
			default:
				x, okX := refParseVersion(v)
				y, _ := refParseVersion(c.Values[0])
				if v != "" && okX {
					cmp := x.compare(y)
					switch c.Op {
					case "lt":
						holds = cmp < 0
					case "le":
						holds = cmp <= 0
					case "gt":
						holds = cmp > 0
					case "ge":
						holds = cmp >= 0
					}
				}
			}
			if !holds {
				match = false
				break
			}
		}
		if match {
			return r.Enabled, true
		}
	}
	switch st.Mode {
	case On:
		return true, true
	case Off:
		return false, true
	}
	switch {
	case a == nil || a.UserID == "" || st.Percent == 0:
		return false, true
	case st.Percent == 100:
		return true, true
	}
	return false, false
}

// sampleAttributes returns requests that exercise st's conditions: each
// attribute a condition names is absent, one of the values the state
// mentions, or a version next to one it compares with.
func sampleAttributes(st State, rnd *rand.Rand) []*Attributes {
	names := []string{"platform", "user"}
	values := []string{"", "ios", "2.3.0", "2.3.0-beta", "10"}
	for _, r := range st.Rules {
		for _, c := range r.When {
			names = append(names, c.Attr)
			values = append(values, c.Values...)
			if v, ok := refParseVersion(c.Values[0]); ok && len(c.Values) == 1 {
				values = append(values, formatVersion(v))
				up, down, pre := v, v, v
				up.parts[3]++
				pre.pre = "a"
				values = append(values, formatVersion(up), formatVersion(pre))
				if down.parts[3] > 0 {
					down.parts[3]--
					values = append(values, formatVersion(down))
				}
			}
		}
	}
	out := []*Attributes{nil, {}}
	for range 16 {
		a := &Attributes{UserID: []string{"", "u-1", "u-2", "user-42", "9"}[rnd.IntN(5)]}
		for _, n := range names {
			v := values[rnd.IntN(len(values))]
			switch n {
			case "platform":
				a.Platform = v
			case "model":
				a.Model = v
			case "app_version":
				a.AppVersion = v
			case "region":
				a.Region = v
			case "user":
				a.UserID = v
			case "locale":
				a.Locale = v
			default:
				if a.Custom == nil {
					a.Custom = make(map[string]string)
				}
				a.Custom[n] = v
			}
		}
		out = append(out, a)
	}
	return out
}

// FuzzState feeds Set the JSON of a state as an operator sends it, and a
// state built from fuzzed fields (a mode, a percentage that may be NaN or
// infinite, and a rule on a fuzzed condition before one on the platform).
// Set never panics; it accepts exactly the states the documentation allows
// and refuses the others with an error matching ErrInvalidConfig that
// names the feature, leaving the state as it was. An accepted state is
// what Status reports, survives JSON and a second switchboard unchanged
// (the same decision for every sampled request), and decides as the
// documentation says: the first rule whose conditions all hold, else the
// mode.
func FuzzState(f *testing.F) {
	for _, s := range []string{
		`{"mode":"on"}`,
		`{"mode":"off"}`,
		`{"mode":"percent","percent":20}`,
		`{"mode":"percent","percent":100}`,
		`{"mode":"percent","percent":0.004}`,
		`{"mode":"percent","percent":-0.5}`,
		`{"mode":"percent","percent":150}`,
		`{"mode":"on","rules":[{"when":[{"attr":"model","op":"in","values":["iPhone8,1"]},{"attr":"app_version","op":"lt","values":["2.3.0"]}],"enabled":false}]}`,
		`{"mode":"off","rules":[{"when":[{"attr":"region","op":"not_in","values":["cn-shanghai"]}],"enabled":true}],"messages":{"zh":"稍后","en":"Later","":"x"}}`,
		`{"mode":"percent","percent":50,"rules":[{"when":[{"attr":"tier","op":"ge","values":["v2.0-beta+7"]}],"enabled":true},{"when":[{"attr":"user","op":"in","values":["u-1"]}],"enabled":false}]}`,
		`{"mode":"on","rules":[{"when":[]}]}`,
		`{"mode":"on","rules":[{"when":[{"attr":"","op":"in","values":["a"]}]}]}`,
		`{"mode":"on","rules":[{"when":[{"attr":"model","op":"like","values":["a"]}]}]}`,
		`{"mode":"on","rules":[{"when":[{"attr":"app_version","op":"lt","values":["1","2"]}]}]}`,
		`{"mode":"on","rules":[{"when":[{"attr":"app_version","op":"le","values":["x.y"]}]}]}`,
		`{"mode":"on","rules":[{"when":[{"attr":"locale","op":"in","values":null}]}]}`,
		`{"mode":"sideways"}`,
		`{"mode":"percent","percent":"20"}`,
		`{"mode":"on","extra":1}`,
		`{"Mode":"ON"}`,
		`null`,
		`[]`,
		`{"mode":"on"} {}`,
	} {
		f.Add([]byte(s), "", 0.0, "", "", "", "", false)
	}
	// States built from fields, not JSON: what JSON cannot carry (NaN, the
	// infinities) and a rule to compare with.
	f.Add([]byte(nil), "on", 0.0, "app_version", "lt", "2.3.0", "", false)
	f.Add([]byte(nil), "percent", math.NaN(), "", "", "", "", false)
	f.Add([]byte(nil), "percent", math.Inf(1), "", "", "", "", false)
	f.Add([]byte(nil), "percent", 33.333, "user", "not_in", "u-1", "u-2", true)
	f.Add([]byte(nil), "off", 0.0, "build", "ge", "v1.2.3.4-rc.1+x", "", true)
	f.Add([]byte(nil), "on", 0.0, "model", "gt", "1", "2", false)
	const name = "fuzzed-feature"
	features := []Feature{
		{Name: name, Level: Optional, Messages: map[string]string{"zh": "推荐暂不可用"}},
		{Name: "other", Level: Core},
	}
	sb, err := New(features)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = sb.Close() })
	mirror, err := New(features)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = mirror.Close() })

	check := func(t *testing.T, st State) {
		t.Helper()
		data := fmt.Sprintf("%+v", st)
		ctx := context.Background()
		before, err := sb.Status(name)
		if err != nil {
			t.Fatal(err)
		}
		err = sb.Set(ctx, name, st, Change{By: "fuzz", Reason: "fuzz"})
		valid := refValidState(st)
		if err != nil {
			if valid {
				t.Fatalf("Set refused a valid state %s: %v", data, err)
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.HasPrefix(err.Error(), name+": ") &&
				!strings.Contains(err.Error(), ": "+name+": ") {
				t.Fatalf("Set(%s) = %v; want ErrInvalidConfig naming %s", data, err, name)
			}
			after, _ := sb.Status(name)
			if mustJSON(t, after) != mustJSON(t, before) || !after.Changed.Equal(before.Changed) {
				t.Fatalf("a refused Set changed the state from %+v to %+v", before, after)
			}
			return
		}
		if !valid {
			t.Fatalf("Set accepted an invalid state %s", data)
		}

		got, err := sb.Status(name)
		if err != nil {
			t.Fatal(err)
		}
		text := mustJSON(t, got.State)
		if got.Source != SourceManual || text != mustJSON(t, st) {
			t.Fatalf("Status after Set(%s) is %s from %s", data, text, got.Source)
		}
		st2, ok := decodeState([]byte(text))
		if !ok || mustJSON(t, st2) != text {
			t.Fatalf("the state %s does not read back as itself: %+v", text, st2)
		}
		if err := mirror.Set(ctx, name, st2, Change{By: "fuzz"}); err != nil {
			t.Fatalf("a state read back from %s is refused: %v", text, err)
		}

		h := fnv.New64a()
		h.Write([]byte(data))
		rnd := rand.New(rand.NewPCG(h.Sum64(), 1))
		for _, a := range sampleAttributes(st, rnd) {
			rctx := ctx
			if a != nil {
				rctx = WithAttributes(ctx, *a)
			}
			on := sb.Enabled(rctx, name)
			if again := mirror.Enabled(rctx, name); again != on {
				t.Fatalf("state %s, request %+v: enabled %v, but %v after a JSON round trip", text, a, on, again)
			}
			if want, known := refEnabled(st, a); known && want != on {
				t.Fatalf("state %s, request %+v: enabled %v, want %v", text, a, on, want)
			}
			cerr := sb.Check(rctx, name)
			if (cerr == nil) != on {
				t.Fatalf("state %s, request %+v: Enabled %v but Check %v", text, a, on, cerr)
			}
			if cerr != nil {
				var de *DegradedError
				if !errors.As(cerr, &de) || !errors.Is(cerr, ErrDegraded) || de.Feature != name || de.Level != Optional {
					t.Fatalf("Check = %#v", cerr)
				}
				if a != nil && a.Locale != "" {
					if m, ok := st.Messages[a.Locale]; ok && de.Message != m {
						t.Fatalf("state %s, locale %q: message %q, want %q", text, a.Locale, de.Message, m)
					}
				}
			}
			if !sb.Enabled(rctx, "other") {
				t.Fatal("setting one feature turned another off")
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, mode string, percent float64, attr, op, value, value2 string, enabled bool) {
		if st, ok := decodeState(data); ok {
			check(t, st)
		}
		st := State{Mode: Mode(mode), Percent: percent}
		if attr != "" || op != "" {
			c := Condition{Attr: attr, Op: op, Values: []string{value}}
			if value2 != "" {
				c.Values = append(c.Values, value2)
			}
			st.Rules = []Rule{
				{When: []Condition{c}, Enabled: enabled},
				{When: []Condition{{Attr: "platform", Op: "in", Values: []string{value}}}, Enabled: !enabled},
			}
		}
		check(t, st)
	})
}
