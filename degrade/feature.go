package degrade

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Level says how much a feature matters. Shedding a level turns off every
// feature at or below it; core features are never shed.
type Level int8

// Levels, from least to most important.
const (
	Optional  Level = 1 // recommendations, animations, reviews
	Important Level = 2 // search suggestions, map navigation
	Core      Level = 3 // browsing, ordering, paying
)

var levelNames = [...]string{Optional: "optional", Important: "important", Core: "core"}

func (l Level) String() string {
	if l >= Optional && l <= Core {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", int8(l))
}

// MarshalText writes the level's name.
func (l Level) MarshalText() ([]byte, error) {
	if l == 0 {
		return []byte("none"), nil
	}
	if l < Optional || l > Core {
		return nil, configError("Level", "is not optional, important or core", int8(l))
	}
	return []byte(levelNames[l]), nil
}

// UnmarshalText reads a level's name; "none" or "" is the zero level.
func (l *Level) UnmarshalText(b []byte) error {
	switch string(b) {
	case "", "none":
		*l = 0
	case "optional":
		*l = Optional
	case "important":
		*l = Important
	case "core":
		*l = Core
	default:
		return configError("level", "is not optional, important or core", string(b))
	}
	return nil
}

// Feature is a part of the service that can be turned off.
type Feature struct {
	// Name identifies the feature in Enabled, Check and the console.
	Name string
	// Level is how much the feature matters; required.
	Level Level
	// Off makes the feature off by default. The zero value is on.
	Off bool
	// Messages is what a user of the degraded feature is told, by
	// locale ("zh", "en", ...). The message for a request is the one for
	// its locale ([Attributes.Locale], matched by language), else
	// Messages[""], else the switchboard's default message.
	Messages map[string]string
	// Description says what the feature is, for the console.
	Description string
}

// Mode is a feature's base state.
type Mode string

// Modes. A percentage rollout keeps a stable share of users on: the same
// user stays on as the percentage grows.
const (
	On      Mode = "on"
	Off     Mode = "off"
	Percent Mode = "percent"
)

// State is what an operator set for a feature: a base mode, optional
// targeting rules, and an optional message. Rules are tried in order; the
// first whose conditions all hold decides; if none does, the mode does.
// Its strings must be valid UTF-8: states are stored and shared as JSON.
type State struct {
	Mode    Mode    `json:"mode"`
	Percent float64 `json:"percent,omitempty"` // 0 to 100, for Mode Percent
	Rules   []Rule  `json:"rules,omitempty"`
	// Messages, when set, replace the feature's messages.
	Messages map[string]string `json:"messages,omitempty"`
}

// Rule turns a feature on or off for the requests its conditions match:
// off for device model X with app version < 2.3.0.
type Rule struct {
	When    []Condition `json:"when"`
	Enabled bool        `json:"enabled"`
}

// Condition tests one attribute of the request ([Attributes]).
//
// Attr is "platform", "model", "app_version", "region", "user",
// "locale" or the name of a custom attribute. Op is "in" or "not_in"
// (the value is, or is not, one of Values; strings compare exactly), or
// "lt", "le", "gt", "ge" (the value compared with Values[0] as versions:
// 2.10.0 > 2.9.1, a missing part counts as 0, and a pre-release such as
// 2.3.0-beta sorts before 2.3.0). A request without the attribute matches
// only "not_in".
type Condition struct {
	Attr   string   `json:"attr"`
	Op     string   `json:"op"`
	Values []string `json:"values"`
}

// Attributes describe the request, for targeting. Put them in the context
// with [WithAttributes], once per request (in middleware).
type Attributes struct {
	Platform   string            // "ios", "android", "wechat-miniprogram", "web"
	Model      string            // device model
	AppVersion string            // "2.3.1"
	Region     string            // "cn-shanghai"
	UserID     string            // stable user id: percentage rollouts hash it
	Locale     string            // "zh-CN", "en": picks the message
	Custom     map[string]string // anything else a rule may name
}

type attrsKey struct{}

// request is the Attributes in a context, with what every check would
// otherwise work out again: the app version, parsed.
type request struct {
	Attributes
	version    version
	hasVersion bool
}

// WithAttributes returns ctx carrying a.
func WithAttributes(ctx context.Context, a Attributes) context.Context {
	r := &request{Attributes: a}
	r.version, r.hasVersion = parseVersion(a.AppVersion)
	return context.WithValue(ctx, attrsKey{}, r)
}

// AttributesFrom returns the attributes in ctx.
func AttributesFrom(ctx context.Context) (Attributes, bool) {
	r, ok := ctx.Value(attrsKey{}).(*request)
	if !ok {
		return Attributes{}, false
	}
	return r.Attributes, true
}

// Attribute names a rule may test, compiled to small numbers.
const (
	attrCustom = iota
	attrPlatform
	attrModel
	attrAppVersion
	attrRegion
	attrUser
	attrLocale
)

var attrNames = map[string]int8{
	"platform": attrPlatform, "model": attrModel, "app_version": attrAppVersion,
	"region": attrRegion, "user": attrUser, "locale": attrLocale,
}

// attr returns attribute id (custom: the named one) and whether it is set.
func (a *Attributes) attr(id int8, custom string) (string, bool) {
	var v string
	switch id {
	case attrPlatform:
		v = a.Platform
	case attrModel:
		v = a.Model
	case attrAppVersion:
		v = a.AppVersion
	case attrRegion:
		v = a.Region
	case attrUser:
		v = a.UserID
	case attrLocale:
		v = a.Locale
	default:
		v = a.Custom[custom]
	}
	return v, v != ""
}

// Source says why a feature is in the state it is.
type Source string

// Sources, from the strongest: an operator's setting for the feature, an
// operator's shed of its level, a trigger, the feature's default.
const (
	SourceManual  Source = "manual"
	SourceShed    Source = "shed"
	SourceTrigger Source = "trigger"
	SourceDefault Source = "default"
)

// Status is a feature as the switchboard sees it now.
type Status struct {
	Feature Feature `json:"-"`
	Name    string  `json:"name"`
	Level   Level   `json:"level"`
	// State is the state in force: the operator's, or the one implied by
	// the source (off for a shed or a trigger, the default otherwise).
	State State `json:"state"`
	// Source says where State comes from.
	Source Source `json:"source"`
	// Trigger names the trigger holding the feature off, if any, even
	// when a manual setting wins over it.
	Trigger string `json:"trigger,omitempty"`
	// Changed is when the manual setting was made, if any.
	Changed time.Time `json:"changed,omitzero"`
}

// Change describes who made a change and why, for the audit trail.
type Change struct {
	By     string `json:"by"`
	Reason string `json:"reason"`
}

// AuditEntry is one change in the audit trail.
type AuditEntry struct {
	At      time.Time       `json:"at"`
	By      string          `json:"by"`
	Action  string          `json:"action"` // "set", "unpin", "shed", "restore"
	Feature string          `json:"feature,omitempty"`
	Before  json.RawMessage `json:"before,omitempty"`
	After   json.RawMessage `json:"after,omitempty"`
	Reason  string          `json:"reason"`
}

// clone returns a deep copy of s, so that a caller's later edits to its
// slices and maps cannot reach a switchboard's state.
func (s State) clone() State {
	s.Messages = maps.Clone(s.Messages)
	if s.Rules != nil {
		rules := make([]Rule, len(s.Rules))
		for i, r := range s.Rules {
			r.When = append([]Condition(nil), r.When...)
			for j := range r.When {
				r.When[j].Values = append([]string(nil), r.When[j].Values...)
			}
			rules[i] = r
		}
		s.Rules = rules
	}
	return s
}

// validate checks s for feature f.
func (s *State) validate(f string) error {
	switch s.Mode {
	case On, Off:
	case Percent:
		if !(s.Percent >= 0 && s.Percent <= 100) {
			return configError(f+": percent", "must be between 0 and 100", s.Percent)
		}
	default:
		return configError(f+": mode", `must be "on", "off" or "percent"`, s.Mode)
	}
	// In order, so the error is the same on every run.
	for _, k := range slices.Sorted(maps.Keys(s.Messages)) {
		if m := s.Messages[k]; !utf8.ValidString(k) || !utf8.ValidString(m) {
			return configError(fmt.Sprintf("%s: messages[%q]", f, k), notUTF8, strconv.Quote(m))
		}
	}
	for i, r := range s.Rules {
		if len(r.When) == 0 {
			return configError(fmt.Sprintf("%s: rules[%d].when", f, i), "must hold a condition", "[]")
		}
		for j, c := range r.When {
			if err := c.validate(); err != nil {
				return fmt.Errorf("%s: rules[%d].when[%d]: %w", f, i, j, err)
			}
		}
	}
	return nil
}

// notUTF8 explains why a state's strings must be UTF-8: JSON, in which
// states are stored and shared, would change them.
const notUTF8 = "must be valid UTF-8 (states are stored as JSON, which would change it)"

func (c *Condition) validate() error {
	if c.Attr == "" {
		return configError("attr", "must not be empty", `""`)
	}
	if !utf8.ValidString(c.Attr) {
		return configError("attr", notUTF8, strconv.Quote(c.Attr))
	}
	for _, v := range c.Values {
		if !utf8.ValidString(v) {
			return configError("values", notUTF8, strconv.Quote(v))
		}
	}
	switch c.Op {
	case "in", "not_in":
		if len(c.Values) == 0 {
			return configError("values", "must hold a value for "+c.Op, "[]")
		}
	case "lt", "le", "gt", "ge":
		if len(c.Values) != 1 {
			return configError("values", "must hold one version for "+c.Op, len(c.Values))
		}
		if _, ok := parseVersion(c.Values[0]); !ok {
			return configError("values", "is not a version", c.Values[0])
		}
	default:
		return configError("op", "must be in, not_in, lt, le, gt or ge", c.Op)
	}
	return nil
}

// message picks the message for locale from msgs: an exact match, then
// the language ("zh" for "zh-CN"), then "".
func message(msgs map[string]string, locale string) (string, bool) {
	if m, ok := msgs[locale]; ok && locale != "" {
		return m, true
	}
	if i := strings.IndexAny(locale, "-_"); i > 0 {
		if m, ok := msgs[locale[:i]]; ok {
			return m, true
		}
	}
	m, ok := msgs[""]
	return m, ok
}
