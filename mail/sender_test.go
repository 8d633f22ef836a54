package mail

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/usersync/usersync/domain"
)

func TestSendErrorTemporary(t *testing.T) {
	tests := []struct {
		name      string
		err       *SendError
		wrap      bool
		temporary bool
		text      string
	}{
		{
			name:      "temporary SMTP reply",
			err:       &SendError{Transport: TransportSMTP, Op: "mail", Code: 451, temporary: true, Err: errors.New("451 try later")},
			temporary: true,
			text:      "mail: smtp mail failed (temporary): 451 try later",
		},
		{
			name: "permanent SMTP reply, wrapped",
			err:  &SendError{Transport: TransportSMTP, Op: "rcpt", Code: 550, Err: errors.New("550 no such user")},
			wrap: true,
			text: "process: mail: smtp rcpt failed (permanent): 550 no such user",
		},
		{
			// context.DeadlineExceeded has a Temporary method of its own;
			// the SendError around it decides.
			name: "permanent around a temporary cause",
			err:  &SendError{Transport: TransportOutbox, Err: context.DeadlineExceeded},
			text: "mail: outbox failed (permanent): context deadline exceeded",
		},
		{
			name:      "temporary outbox write, wrapped",
			err:       &SendError{Transport: TransportOutbox, Op: "write", temporary: true, Err: errors.New("disk full")},
			wrap:      true,
			temporary: true,
			text:      "process: mail: outbox write failed (temporary): disk full",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error = tt.err
			if tt.wrap {
				err = fmt.Errorf("process: %w", err)
			}
			if got := tt.err.Temporary(); got != tt.temporary {
				t.Errorf("Temporary() = %v, want %v", got, tt.temporary)
			}
			if got := domain.Temporary(err); got != tt.temporary {
				t.Errorf("domain.Temporary = %v, want %v", got, tt.temporary)
			}
			if err.Error() != tt.text {
				t.Errorf("Error() = %q, want %q", err, tt.text)
			}
			if !errors.Is(err, tt.err.Err) {
				t.Error("the cause does not unwrap")
			}
		})
	}
}
