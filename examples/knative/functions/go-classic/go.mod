module example.com/order-go

go 1.22
