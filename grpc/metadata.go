package bulwarkgrpc

import (
	"context"

	"github.com/bulwarkgo/bulwark/degrade"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Metadata keys that carry the [degrade.Attributes] of a call, the gRPC
// counterparts of the headers [degrade.HeaderAttributes] reads. Locale
// travels as accept-language, whose first language is the locale.
//
// Under these keys gRPC sends only printable ASCII, and fails a call with
// any other value in the client, with codes.Internal. A value that is not
// printable ASCII (a device model "华为 Mate 60", a region in Chinese)
// travels under the key's binary form instead, the key with "-bin"
// appended ("x-device-model-bin"), whose values gRPC carries
// base64-encoded and hands over as the bytes sent.
// [UnaryClientAttributes] chooses the form for each value, and
// [IncomingAttributes] reads either, so any UTF-8 text goes through
// unchanged.
const (
	MetadataPlatform    = "x-platform"
	MetadataDeviceModel = "x-device-model"
	MetadataAppVersion  = "x-app-version"
	MetadataRegion      = "x-region"
	MetadataUserID      = "x-user-id"
	MetadataLocale      = "accept-language"
)

// attributeKeys are the metadata keys of the attributes, in the order of
// the fields of degrade.Attributes, each with its binary form.
var attributeKeys = [...]struct{ text, bin string }{
	{MetadataPlatform, MetadataPlatform + "-bin"},
	{MetadataDeviceModel, MetadataDeviceModel + "-bin"},
	{MetadataAppVersion, MetadataAppVersion + "-bin"},
	{MetadataRegion, MetadataRegion + "-bin"},
	{MetadataUserID, MetadataUserID + "-bin"},
	{MetadataLocale, MetadataLocale + "-bin"},
}

// IncomingAttributes reads a call's attributes from its incoming metadata:
// the first value of each key above, or, when it has none, of the key's
// binary form (see the keys), and the first language of accept-language
// as the locale. Custom attributes do not travel.
//
// Anyone can send any metadata: trust x-user-id only from a gateway that
// sets it after authenticating the user, or read the attributes with your
// own function that takes the user id from the authenticated identity.
//
// Behind grpc-gateway, forward the HTTP headers X-Platform,
// X-Device-Model, X-App-Version, X-Region and Accept-Language, and their
// -Bin forms (X-Device-Model-Bin), under these keys; X-User-Id too if the
// gateway sets it itself after authenticating the user. The gateway's
// default header matcher passes Accept-Language on as
// grpcgateway-accept-language and drops the others, so give it one
// (runtime.WithIncomingHeaderMatcher) that keeps their names, lowercased.
// The gateway drops a header value that is not printable ASCII and
// decodes the base64 of a -Bin header, so an HTTP client sends a value
// that is not ASCII base64-encoded, under the -Bin header.
//
// gRPC copies each value it finds, so a call costs one small allocation
// per key present; a key that is absent costs a second look, for its
// binary form, but no allocation.
func IncomingAttributes(ctx context.Context) degrade.Attributes {
	return degrade.Attributes{
		Platform:   incomingAttribute(ctx, 0),
		Model:      incomingAttribute(ctx, 1),
		AppVersion: incomingAttribute(ctx, 2),
		Region:     incomingAttribute(ctx, 3),
		UserID:     incomingAttribute(ctx, 4),
		Locale:     firstLanguage(incomingAttribute(ctx, 5)),
	}
}

// incomingAttribute is the value of the attribute whose keys are
// attributeKeys[i], in either form.
func incomingAttribute(ctx context.Context, i int) string {
	if v := incoming(ctx, attributeKeys[i].text); v != "" {
		return v
	}
	return incoming(ctx, attributeKeys[i].bin)
}

func incoming(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// firstLanguage returns the first tag of an Accept-Language value:
// "zh-CN" of "zh-CN,zh;q=0.9,en;q=0.8".
func firstLanguage(v string) string {
	for len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	for i := 0; i < len(v); i++ {
		if v[i] == ',' || v[i] == ';' || v[i] == ' ' {
			return v[:i]
		}
	}
	return v
}

// UnaryServerAttributes returns an interceptor that puts the attributes
// from finds for each call into the call's context with
// [degrade.WithAttributes], so that [degrade.Switchboard.Enabled] in the
// handler, and a [Guard] chained after it, decide for the caller's
// platform, device model, app version, region, user and locale. A nil from
// is [IncomingAttributes]. Attributes already in the context are replaced.
func UnaryServerAttributes(from func(context.Context) degrade.Attributes) grpc.UnaryServerInterceptor {
	if from == nil {
		from = IncomingAttributes
	}
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(degrade.WithAttributes(ctx, from(ctx)), req)
	}
}

// StreamServerAttributes is [UnaryServerAttributes] for streams: the
// handler's stream has a context carrying the attributes.
func StreamServerAttributes(from func(context.Context) degrade.Attributes) grpc.StreamServerInterceptor {
	if from == nil {
		from = IncomingAttributes
	}
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		return handler(srv, &contextStream{ServerStream: ss, ctx: degrade.WithAttributes(ctx, from(ctx))})
	}
}

// contextStream is a server stream with another context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// UnaryClientAttributes returns an interceptor that sends the attributes
// in the call's context ([degrade.AttributesFrom]) as outgoing metadata
// under the keys above, which [IncomingAttributes] reads on the server, so
// a service that calls another passes its caller's attributes on. A value
// that is not printable ASCII goes under the key's binary form, since
// gRPC refuses it under the other (see the keys). Empty attributes are
// left out, and so are custom ones. The metadata is added to any the
// context already carries.
func UnaryClientAttributes() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(outgoingAttributes(ctx), method, req, reply, cc, opts...)
	}
}

// StreamClientAttributes is [UnaryClientAttributes] for streams.
func StreamClientAttributes() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(outgoingAttributes(ctx), desc, cc, method, opts...)
	}
}

func outgoingAttributes(ctx context.Context) context.Context {
	a, ok := degrade.AttributesFrom(ctx)
	if !ok {
		return ctx
	}
	var buf [2 * len(attributeKeys)]string
	kv := buf[:0]
	for i, v := range [...]string{a.Platform, a.Model, a.AppVersion, a.Region, a.UserID, a.Locale} {
		switch {
		case v == "":
		case printable(v):
			kv = append(kv, attributeKeys[i].text, v)
		default:
			kv = append(kv, attributeKeys[i].bin, v)
		}
	}
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
