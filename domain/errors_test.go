package domain_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/usersync/usersync/domain"
)

func TestFail_IsAFailureOfItsKindWithItsReason(t *testing.T) {
	kinds := []error{domain.ErrInvalidRequest, domain.ErrCRMRefused, domain.ErrImportFailed, domain.ErrCRMUnavailable}
	for _, kind := range kinds {
		t.Run(kind.Error(), func(t *testing.T) {
			err := domain.Fail(kind, "contact 12 has no email")
			if err.Error() != "contact 12 has no email" {
				t.Errorf("Error() = %q: the reason recorded in the outcome must be the reason alone", err)
			}
			for _, e := range []error{err, fmt.Errorf("add: %w", err)} {
				for _, other := range kinds {
					if got := errors.Is(e, other); got != (other == kind) {
						t.Errorf("errors.Is(%q, %v) = %v", e, other, got)
					}
				}
				var f *domain.Failure
				if !errors.As(e, &f) || f.Kind != kind || f.Reason != "contact 12 has no email" {
					t.Errorf("errors.As(%q) = %+v", e, f)
				}
			}
		})
	}
}

func TestFailure_UnwrapsToItsKind(t *testing.T) {
	f := &domain.Failure{Kind: domain.ErrCRMRefused, Reason: "contact 12 belongs to another site"}
	if errors.Unwrap(f) != domain.ErrCRMRefused {
		t.Fatalf("Unwrap = %v", errors.Unwrap(f))
	}
}

type tempErr struct{ temp bool }

func (e tempErr) Error() string   { return fmt.Sprintf("temporary=%v", e.temp) }
func (e tempErr) Temporary() bool { return e.temp }

func TestTemporary(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"Nil", nil, false},
		{"PlainError", errors.New("connection refused"), false},
		{"MarkedTemporary", tempErr{temp: true}, true},
		{"MarkedNotTemporary", tempErr{temp: false}, false},
		{"WrappedTemporary", fmt.Errorf("get contact 12: %w", tempErr{temp: true}), true},
		{"TwiceWrappedTemporary", fmt.Errorf("add: %w", fmt.Errorf("get contact 12: %w", tempErr{temp: true})), true},
		{"JoinedWithATemporary", errors.Join(errors.New("first"), tempErr{temp: true}), true},
		// A kind is not a mark: only adapters say what is worth retrying.
		{"FailureOfKindCRMUnavailable", domain.Fail(domain.ErrCRMUnavailable, "FunnelKit is down"), false},
		{"ConcurrencyError", &domain.ConcurrencyError{Stream: "contact-1", Expected: domain.NoStream(), Actual: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := domain.Temporary(tt.err); got != tt.want {
				t.Fatalf("Temporary(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
