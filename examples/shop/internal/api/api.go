// Package api holds the JSON bodies of the shop's HTTP API, shared by the
// shop and the scenario that drives it.
//
// Clients identify themselves with the X-User-Id header (the per-user rate
// limit's key and the degrade targeting's user) and may send X-Platform and
// X-App-Version. Endpoints:
//
//	GET    /api/products              Products
//	GET    /api/products/{sku}        ProductPage (optional parts may be degraded)
//	POST   /api/sale/line             join the flash sale's line: 202 queue.TicketView
//	GET    /api/sale/line?ticket=ID   poll: 202 queue.TicketView, or 200 with the admission token
//	DELETE /api/sale/line?ticket=ID   leave: 204
//	POST   /api/sale/orders           OrderRequest with the Bulwark-Admission header: OrderReply
//	GET    /api/orders/{id}           Order
//	GET    /ops/stats                 Stats            (operator token)
//	GET    /ops/ledger                Ledger           (operator token)
//	GET    /ops/providers             []ProviderFault  (operator token)
//	PUT    /ops/providers/{name}      ProviderFault    (operator token)
//	/admin/                           the degrade console and its API (operator or viewer token)
//	/metrics                          OpenTelemetry metrics in Prometheus' text format
//
// Operator endpoints take "Authorization: Bearer TOKEN".
//
// Refusals are JSON Error bodies. Their codes:
//
//	429 rate_limited                         per-user or global limit (Scope says which), Retry-After
//	503 queue_full, wait_too_long, unavailable   the line refused to take the user, Retry-After
//	410 ticket_expired                       the ticket lapsed (not polled in time)
//	403 token_missing, token_invalid, token_expired, token_replayed
//	503 overloaded                           the order path shed the request (the token is not used up), Retry-After
//	400 bad_request                          a body that is not an OrderRequest for a sale item (the token is not used up)
//	409 sold_out                             no stock left for the item
//	402 declined                             the card was declined: a final answer
//	503 unavailable                          the shop's store cannot be reached
//	503 payment_unavailable                  payment could not even be buffered (the unit is given back)
//	404 not_found                            no such product, or no such order of this user
//
// Once the token has been redeemed (any answer but overloaded and
// bad_request), the admission is used up: a user who got 409, 402 or a 503
// after it must join the line again.
package api

import "time"

// Header names the shop reads besides the queue's.
const (
	UserHeader = "X-User-Id"
)

// Product is an item of the catalogue.
type Product struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
	FlashSale  bool   `json:"flash_sale"`
	// StockLeft is the stock of a flash-sale item; -1 for other items.
	StockLeft int64 `json:"stock_left"`
}

// Products is the catalogue.
type Products struct {
	Products []Product `json:"products"`
}

// Review is one review of a product.
type Review struct {
	User  string `json:"user"`
	Stars int    `json:"stars"`
	Text  string `json:"text"`
}

// Degraded says that an optional part of a page was left out, and why.
type Degraded struct {
	Feature string `json:"feature"`
	Message string `json:"message"`
}

// ProductPage is a product with its optional parts: recommendations and
// reviews are left out (and listed in Degraded) while their features are
// switched off.
type ProductPage struct {
	Product         Product    `json:"product"`
	Recommendations []Product  `json:"recommendations,omitempty"`
	Reviews         []Review   `json:"reviews,omitempty"`
	Degraded        []Degraded `json:"degraded,omitempty"`
}

// Cards the simulated payment providers understand.
const (
	CardOK       = "4111-ok"
	CardDeclined = "4000-declined"
)

// OrderRequest buys one unit of a flash-sale item.
type OrderRequest struct {
	SKU  string `json:"sku"`
	Card string `json:"card"`
}

// Order statuses.
const (
	StatusPaid     = "paid"     // a provider took the payment
	StatusPending  = "pending"  // accepted and held in the buffer until a provider can take it (or being paid)
	StatusDeclined = "declined" // the card was declined, at once or from the buffer; the unit went back
)

// OrderReply answers an accepted order: 201 paid, 202 pending (accepted,
// payment buffered). A declined card gets 402 with an Error naming the
// order.
type OrderReply struct {
	Order    string `json:"order"`
	Status   string `json:"status"`
	Provider string `json:"provider,omitempty"`
	Message  string `json:"message,omitempty"`
}

// Order is an order as the shop keeps it.
type Order struct {
	ID       string    `json:"id"`
	User     string    `json:"user"`
	SKU      string    `json:"sku"`
	Status   string    `json:"status"`
	Provider string    `json:"provider,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// Error is the body of every refusal.
type Error struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	// Scope of a rate_limited refusal: "user" or "global".
	Scope string `json:"scope,omitempty"`
	// RetryAfterSeconds repeats the Retry-After header, when there is one.
	RetryAfterSeconds int `json:"retry_after_seconds,omitempty"`
	// Order names the order of a declined payment.
	Order string `json:"order,omitempty"`
}

// Stats is one instance's view of the shop, for the scenario's report.
// With Redis, Room, Stock, Orders, PaidBy and Buffered are the fleet's;
// Breakers, Degraded and ConcurrencyLimit are this instance's.
type Stats struct {
	Instance string           `json:"instance"`
	Room     RoomStats        `json:"room"`
	Stock    map[string]int64 `json:"stock"` // SKU → units left
	// Orders counts orders by status (paid, pending, declined).
	Orders map[string]int64 `json:"orders"`
	// PaidBy counts payments taken, by provider, across the fleet.
	PaidBy map[string]int64 `json:"paid_by"`
	// Buffered is the number of payments the buffer holds, dead letters
	// included.
	Buffered int64 `json:"buffered"`
	// Breakers gives each payment provider's breaker state on this
	// instance: "closed", "open" or "half-open".
	Breakers map[string]string `json:"breakers"`
	// Degraded lists the features switched off on this instance.
	Degraded []string `json:"degraded"`
	// ConcurrencyLimit is the order path's adaptive limit now.
	ConcurrencyLimit int `json:"concurrency_limit"`
}

// RoomStats is the waiting room's line.
type RoomStats struct {
	Length     int     `json:"length"`
	Active     int     `json:"active"`
	Outflow    float64 `json:"outflow"`
	ETASeconds float64 `json:"eta_seconds"`
}

// Payment attempt outcomes in the ledger.
const (
	OutcomeCharged  = "charged"
	OutcomeDeclined = "declined"
	OutcomeFailed   = "failed"  // the provider answered with an error
	OutcomeTimeout  = "timeout" // the provider hung until the caller gave up
	OutcomeRepeat   = "repeat"  // an order already charged: answered as charged, not charged again
)

// Attempt is one call to a simulated payment provider, stamped when the
// provider answered.
type Attempt struct {
	Order    string    `json:"order"`
	Provider string    `json:"provider"`
	Outcome  string    `json:"outcome"`
	At       time.Time `json:"at"`
}

// Ledger is every call the simulated providers received, in order: those
// of this instance in memory, those of the whole fleet with Redis (the
// providers stand for outside services, shared by every instance).
type Ledger struct {
	Instance string    `json:"instance"`
	Attempts []Attempt `json:"attempts"`
}

// ProviderFault is how a simulated provider misbehaves: a share of calls
// fails at once, another share hangs until the caller gives up, and every
// call takes at least Latency.
type ProviderFault struct {
	Name      string  `json:"name"`
	FailRate  float64 `json:"fail_rate"`
	HangRate  float64 `json:"hang_rate"`
	LatencyMS int     `json:"latency_ms"`
}
